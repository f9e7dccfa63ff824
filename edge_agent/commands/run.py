"""`edge-agent run` (live camera + GNSS) and `edge-agent replay` (the same pipeline on a recorded drive)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edge_agent.commands import config_option, finite
from roadmon_contract.status import SPARSE_FRAMES_M, mount_moved_words, sparse_frames_fix

err = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole (copy-paste)

# What a part that cannot start raises (the outbox's folder, calibration, the GNSS port, SQLite): one line each.
STARTUP_ERRORS = (OSError, ValueError, RuntimeError, sqlite3.Error)
# `replay --uplink` ran, but the server had not confirmed every row when --drain-s ran out.
EXIT_UNCONFIRMED = 3
# `replay --uplink` ran, and the server refused rows for good (they will never be delivered, however long one
# waits); it wins over EXIT_UNCONFIRMED, since waiting longer does not help these.
EXIT_REJECTED = 4
# --drain-s: a link that confirms nothing within an hour will not in the next one, and the rows stay in the
# outbox for the agent to send anyway; without a max, --drain-s inf waited for ever on a dead broker.
MAX_DRAIN_S = 3600.0


def load_config(path: str | None) -> Any:
    """The agent config at PATH (the built-in defaults without one); a bad one is printed, key by key, and exit 2."""
    from edge_agent import config as agent_config

    try:
        return agent_config.load(path) if path else agent_config.AgentConfig()
    except agent_config.ConfigError as exc:
        err.print(f"[red]config error[/red] {exc.source}:")
        for problem in exc.problems:
            err.print(f"  {problem}")
        raise typer.Exit(2) from None


def _cannot_start(exc: BaseException) -> None:
    """One line (and a hint when the part has one) for a part that cannot start; exit 2."""
    err.print(f"[red]cannot start[/red]: {exc}", highlight=False)
    hint = getattr(exc, "hint", "")
    if hint:
        err.print(f"hint: {hint}", markup=False, highlight=False)
    raise typer.Exit(2) from None


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="replay summary", show_header=False)
    for key in ("frames", "frames_repeated", "dropped", "detections", "tracks", "events", "events_merged",
                "events_held", "events_no_fix", "events_refused", "detector_errors", "coverage_records", "fixes", "fps",
                "m_per_frame", "sparse_share", "inference_ms", "wall_s", "clock", "start_utc", "outbox"):
        if key in summary:
            style = "red" if key in ("events_refused", "detector_errors") and summary[key] else None
            if key == "events_no_fix" and summary[key]:  # defects seen but not placed: GNSS gaps or a cold start
                style = "yellow"
            if key == "m_per_frame" and (summary[key] or 0) > SPARSE_FRAMES_M:
                style = "yellow"
            table.add_row(key, str(summary[key]), style=style)
    if isinstance(mount := summary.get("mount"), dict):
        table.add_row("mount", f"{mount['state']}: pitch {mount['pitch_deg']}°, yaw {mount['yaw_deg']}° on the road "
                               f"(config {mount['config_pitch_deg']}°, {mount['config_yaw_deg']}°)",
                      style="yellow" if mount["state"] == "moved" else None)
    elif "mount" in summary:
        table.add_row("mount", "not judged (too little straight driving on marked roads, or "
                               "calibration.mount_check_every_s = 0)")
    if "uplink" in summary:
        drained = summary["uplink"]
        table.add_row("uplink", _uplink_text(drained),
                      style="red" if drained["unconfirmed"] or drained["rejected"]["count"] else None)
        if drained["rejected"]["count"]:
            table.add_row("rejected because", _reasons_text(drained["rejected"]["reasons"]), style="red")
    return table


# Of the frames processed while driving, this share too far apart is worth a warning whatever the last minute's
# figure: a rendered drive at 2 frames a second had 56 % of its steps over 6 m and still gave every pothole (two
# views metres apart confirm a track); one at 1 a second had all of them and gave few.
SPARSE_SHARE_WARNED = 0.75


def _warn_if_sparse(summary: dict[str, Any], realtime: bool, mirror_pass: bool) -> None:
    """Say so when the frames processed were too far apart for the tracker (a raw survey sequence, a slow box):
    by the share of such frames over the whole drive, as the smoothed figure is only its last minute's. Replayed
    frame by frame, the recording has too few frames; replayed in real time, the detector may be the cause."""
    step, share = summary.get("m_per_frame"), summary.get("sparse_share")
    if not ((share or 0) >= SPARSE_SHARE_WARNED or (step or 0) > SPARSE_FRAMES_M):
        return
    fix = (sparse_frames_fix(summary.get("fps"), summary.get("inference_ms"), mirror_pass) if realtime else
           "every frame of the recording was processed: it has too few for the speed driven (record more frames a "
           "second)")
    err.print(f"[yellow]warning[/yellow]: {share or 0:.0%} of the frames processed while driving were more than "
              f"{SPARSE_FRAMES_M:g} m apart (at the end a frame every {step or 0:.1f} m); a defect seen in fewer than "
              f"two frames is not reported. {fix}", highlight=False)


def _uplink_text(drained: dict[str, Any]) -> str:
    link = drained["uplink"]
    text = (f"{link.get('confirmed', 0)} confirmed, {drained['rejected']['count']} rejected by the server, "
            f"{drained['unconfirmed']} unconfirmed, {link.get('state')}")
    return text + (f" ({link['last_error']})" if drained["unconfirmed"] and link.get("last_error") else "")


def _reasons_text(reasons: list[dict[str, Any]]) -> str:
    """The server's commonest reasons, each with how many rows it refused for it."""
    return "; ".join(f"{r['reason']} ({r['count']} rows)" for r in reasons)


def _drain(uplink: Any, outbox: Any, timeout_s: float, since: str) -> dict[str, Any]:
    """Wait until the server has confirmed or refused everything in the outbox (or TIMEOUT_S passed); with
    what it refused since the UTC stamp SINCE (this replay's start)."""
    deadline = time.monotonic() + timeout_s
    stats = outbox.stats()
    while stats["queue_depth"] and time.monotonic() < deadline:
        time.sleep(0.5)
        stats = outbox.stats()
    return {"unconfirmed": stats["queue_depth"], "rejected": outbox.rejections(since=since),
            "uplink": uplink.snapshot()}


def _exit_unless_delivered(drained: dict[str, Any], drain_s: float) -> None:
    """Say what the server did not take, and exit EXIT_REJECTED or EXIT_UNCONFIRMED; return when it took all."""
    rejected = drained["rejected"]
    if drained["unconfirmed"]:
        err.print(f"[red]not delivered[/red]: {_uplink_text(drained)} after {drain_s:g} s; the rows "
                  "stay in the outbox (`edge-agent doctor --only broker` checks the link)", highlight=False)
    if rejected["count"]:
        err.print(f"[red]rejected by the server[/red]: {rejected['count']} rows will never be delivered: "
                  f"{_reasons_text(rejected['reasons'])}; `edge-agent queue ls --state rejected --json` lists "
                  "each", highlight=False)
        raise typer.Exit(EXIT_REJECTED)
    if drained["unconfirmed"]:
        raise typer.Exit(EXIT_UNCONFIRMED)


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay(
        video: Path = typer.Option(..., "--video", help="Recorded video (drive.json beside it gives its start time)"),
        nmea: Path = typer.Option(..., "--nmea", help="NMEA recording of the same drive"),
        config: str | None = config_option(None, "Agent config (TOML); built-in defaults otherwise"),
        outbox: Path | None = typer.Option(None, "--outbox",
                                           help="Outbox file to write (default: the config's outbox)"),
        realtime: bool = typer.Option(False, "--realtime",
                                      help="Play at the video's frame rate, dropping frames the pipeline can't take"),
        video_start: str | None = typer.Option(None, "--video-start",
                                               help="UTC of the first frame (ISO 8601) when there is no drive.json"),
        uplink: bool = typer.Option(False, "--uplink/--no-uplink", help="Also drain the outbox to the broker"),
        drain_s: float = typer.Option(60.0, "--drain-s", min=0, max=MAX_DRAIN_S, callback=finite,
                                      help="With --uplink: wait up to this long for the server to confirm "
                                           f"everything; exit {EXIT_UNCONFIRMED} when rows are still unconfirmed, "
                                           f"{EXIT_REJECTED} when the server rejected rows"),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    ) -> None:
        """Run the agent's pipeline on a recorded drive: events and coverage go to the outbox."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from edge_agent.detect.detector import ModelError
        from edge_agent.runtime.assemble import build_agent
        from edge_agent.runtime.replay import ReplayError, replay_drive
        from roadmon_contract.times import utc_now_iso

        cfg = load_config(config)
        for what, path in (("video", video), ("NMEA", nmea)):
            if path.is_dir():  # it exists: "not found" sent the technician looking for the wrong thing
                err.print(f"[red]cannot replay[/red]: {what} {path} is a folder, not a file")
                raise typer.Exit(2)
            if not path.is_file():
                err.print(f"[red]cannot replay[/red]: {what} file {path} not found")
                raise typer.Exit(2)
        started_at = utc_now_iso()  # rows the server refuses from now on were refused during this replay
        try:
            agent = build_agent(cfg, outbox=outbox, uplink=uplink)
        except ModelError as exc:
            err.print(f"[red]model error[/red]: {exc}")
            raise typer.Exit(2) from None
        except STARTUP_ERRORS as exc:  # the outbox's folder read-only or full, a bad calibration
            _cannot_start(exc)
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
                summary["uplink"] = _drain(agent.uplink, agent.outbox, drain_s, started_at)
        except ReplayError as exc:
            err.print(f"[red]cannot replay[/red]: {exc}")
            raise typer.Exit(2) from None
        finally:
            agent.close()
        summary["outbox"] = str(outbox or cfg.outbox_path)
        _warn_if_sparse(summary, realtime, cfg.detector.mirror_pass)
        if (moved := mount_moved_words(summary.get("mount"))) is not None:
            err.print(f"[yellow]warning[/yellow]: {moved}", highlight=False)
        if as_json:
            sys.stdout.write(json.dumps(summary) + "\n")
        else:
            Console().print(_summary_table(summary))
        if "uplink" in summary:
            _exit_unless_delivered(summary["uplink"], drain_s)

    @app.command("run")
    def run(
        config: str = config_option(),
        uplink: bool | None = typer.Option(None, "--uplink/--no-uplink",
                                           help="Override uplink.enabled from the config"),
    ) -> None:
        """Run the agent: live camera and GNSS, detect, track, geolocate, store and forward."""
        from edge_agent.detect.detector import ModelError
        from edge_agent.runtime.config_reload import EXIT_CONFIG_RELOAD
        from edge_agent.runtime.live import LiveAgent

        cfg = load_config(config)
        agent = LiveAgent(cfg, uplink=uplink, config_path=config)
        try:
            summary = agent.run()
        except ModelError as exc:  # the effective model (a remote update supersedes the configured one)
            err.print(f"[red]model error[/red]: {exc}")
            raise typer.Exit(2) from None
        except STARTUP_ERRORS as exc:  # outbox folder, calibration, GNSS port set-up
            _cannot_start(exc)
        err.print(f"stopped: {summary['frames']} frames, {summary['events']} events, {summary['dropped']} dropped")
        if agent.reload_requested:  # cmd/config-reload: the service manager starts us again on the new file
            err.print(f"config-reload: exiting with {EXIT_CONFIG_RELOAD} to be started again with {config}")
            raise typer.Exit(EXIT_CONFIG_RELOAD)
