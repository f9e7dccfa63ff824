"""`edge-agent run` (live camera + GNSS) and `edge-agent replay` (the same pipeline on a recorded drive)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

err = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole (copy-paste)


def _load_config(path: Path | None) -> Any:
    from edge_agent import config as agent_config

    try:
        return agent_config.load(path) if path else agent_config.AgentConfig()
    except agent_config.ConfigError as exc:
        err.print(f"[red]config error[/red] {exc.source}:")
        for problem in exc.problems:
            err.print(f"  {problem}")
        raise typer.Exit(2) from None


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="replay summary", show_header=False)
    for key in ("frames", "dropped", "detections", "tracks", "events", "events_merged", "events_no_fix",
                "coverage_records", "fixes", "fps", "inference_ms", "wall_s", "clock", "start_utc", "outbox"):
        if key in summary:
            table.add_row(key, str(summary[key]))
    return table


def _drain(uplink: Any, outbox: Any, timeout_s: float) -> dict[str, Any]:
    """Wait until the server has confirmed everything in the outbox (or TIMEOUT_S passed)."""
    deadline = time.monotonic() + timeout_s
    stats = outbox.stats()
    while stats["queue_depth"] and time.monotonic() < deadline:
        time.sleep(0.5)
        stats = outbox.stats()
    return {"unconfirmed": stats["queue_depth"], "uplink": uplink.snapshot()}


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay(
        video: Path = typer.Option(..., "--video", help="Recorded video (drive.json beside it gives its start time)"),
        nmea: Path = typer.Option(..., "--nmea", help="NMEA recording of the same drive"),
        config: Path | None = typer.Option(None, "--config", "-c", help="Agent config (TOML); defaults otherwise"),
        outbox: Path | None = typer.Option(None, "--outbox",
                                           help="Outbox file to write (default: the config's outbox)"),
        realtime: bool = typer.Option(False, "--realtime",
                                      help="Play at the video's frame rate, dropping frames the pipeline can't take"),
        video_start: str | None = typer.Option(None, "--video-start",
                                               help="UTC of the first frame (ISO 8601) when there is no drive.json"),
        uplink: bool = typer.Option(False, "--uplink/--no-uplink", help="Also drain the outbox to the broker"),
        drain_s: float = typer.Option(60.0, "--drain-s", help="With --uplink: wait up to this long for the "
                                                              "server to confirm everything before exiting"),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    ) -> None:
        """Run the agent's pipeline on a recorded drive: events and coverage go to the outbox."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from edge_agent.detect.detector import ModelError
        from edge_agent.runtime.assemble import build_agent
        from edge_agent.runtime.replay import ReplayError, replay_drive

        cfg = _load_config(config)
        for what, path in (("video", video), ("NMEA", nmea)):
            if not path.is_file():
                err.print(f"[red]cannot replay[/red]: {what} file {path} not found")
                raise typer.Exit(2)
        try:
            agent = build_agent(cfg, outbox=outbox, uplink=uplink)
        except ModelError as exc:
            err.print(f"[red]model error[/red]: {exc}")
            raise typer.Exit(2) from None
        columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeRemainingColumn())
        try:
            with Progress(*columns, console=err, transient=as_json, disable=not err.is_terminal and as_json) as bar:
                task = bar.add_task("replay", total=None, rate="")
                t0 = time.monotonic()

                def progress(done: int, total: int | None) -> None:
                    if done % 10 == 0 or done == total:
                        rate = f"{done / max(time.monotonic() - t0, 1e-9):.1f} fps"
                        bar.update(task, completed=done, total=total, rate=rate)

                summary = replay_drive(agent, video, nmea, realtime=realtime, video_start=video_start,
                                       progress=progress)
            if agent.uplink is not None:
                summary["uplink"] = _drain(agent.uplink, agent.outbox, drain_s)
        except ReplayError as exc:
            err.print(f"[red]cannot replay[/red]: {exc}")
            raise typer.Exit(2) from None
        finally:
            agent.close()
        summary["outbox"] = str(outbox or cfg.outbox_path)
        if as_json:
            sys.stdout.write(json.dumps(summary) + "\n")
        else:
            Console().print(_summary_table(summary))

    @app.command("run")
    def run(
        config: Path = typer.Option(..., "--config", "-c", help="Agent config (TOML)"),
        uplink: bool | None = typer.Option(None, "--uplink/--no-uplink",
                                           help="Override uplink.enabled from the config"),
    ) -> None:
        """Run the agent: live camera and GNSS, detect, track, geolocate, store and forward."""
        from edge_agent.detect.detector import ModelError
        from edge_agent.runtime.live import LiveAgent

        cfg = _load_config(config)
        agent = LiveAgent(cfg, uplink=uplink)
        try:
            summary = agent.run()
        except ModelError as exc:  # the effective model (a remote update supersedes the configured one)
            err.print(f"[red]model error[/red]: {exc}")
            raise typer.Exit(2) from None
        except (OSError, ValueError, RuntimeError) as exc:  # outbox path, calibration, GNSS port set-up
            err.print(f"[red]cannot start the agent[/red]: {exc}")
            raise typer.Exit(2) from None
        err.print(f"stopped: {summary['frames']} frames, {summary['events']} events, {summary['dropped']} dropped")
