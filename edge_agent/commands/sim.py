"""`edge-agent sim drive`: a deterministic synthetic drive with ground truth (video, NMEA, truth, defects)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edge_agent.commands import finite
from roadmon_contract.commands import zoned_time

sim_app = typer.Typer(help="Simulator: synthetic drives with ground truth for tests, demos and benchmarks.",
                      no_args_is_help=True)
out = Console()
err = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole (copy-paste)
# The classic 32-bit seed range: numpy would take any non-negative integer, but drive.json records the seed and
# every tool that reads it back (and a person retyping it) handles this range.
MAX_SEED = 2**32 - 1


@sim_app.command("drive")
def drive(
    out_dir: Path = typer.Option(..., "--out", help="Folder to write the drive into (created)"),
    seed: int = typer.Option(1, "--seed", min=0, max=MAX_SEED, help="Same seed, same drive (byte for byte)"),
    minutes: float = typer.Option(2.0, "--minutes", min=0.05, max=120, callback=finite,
                                  help="Length of the video, minutes"),
    # The same longest drive as --minutes (two hours): without a max, --duration inf rendered for ever.
    duration: float | None = typer.Option(None, "--duration", min=3, max=120 * 60, callback=finite,
                                          help="Length in seconds (overrides --minutes)"),
    gps_noise_m: float = typer.Option(3.0, "--gps-noise-m", min=0, max=100, callback=finite,
                                      help="GNSS horizontal RMS error, metres (per axis: this / sqrt 2)"),
    gps_noise_model: str = typer.Option(
        "white", "--gps-noise-model",
        help="white: independent Gaussian error each epoch (the issues' synthetic receiver); drift: a real "
             "receiver's error, 75 % wandering with a 45 s time constant"),
    nmea_hz: float = typer.Option(1.0, "--nmea-hz", min=0.1, max=20, callback=finite, help="GNSS epochs per second"),
    defects: int = typer.Option(12, "--defects", min=0, max=10000,
                                help="Defects painted on the driven lane (2/3 potholes, 1/3 cracks)"),
    potholes: int | None = typer.Option(None, "--potholes", min=0, max=10000,  # as many as --defects may
                                        help="Exact number of potholes (the rest of --defects are cracks)"),
    fps: float = typer.Option(15.0, "--fps", min=1, max=60, callback=finite, help="Video frame rate"),
    width: int = typer.Option(640, "--width", min=64, max=3840, help="Frame width, pixels"),
    height: int = typer.Option(360, "--height", min=48, max=2160, help="Frame height, pixels"),
    start: str | None = typer.Option(None, "--start",
                                     help="The first frame's time: 'now' or RFC 3339 with a zone. Default: a fixed "
                                          "date per seed (2026-05-12), which a server refuses as older than its "
                                          "ingest.horizon_days: use --start now for `replay --uplink`"),
) -> None:
    """Render a drive: video.mp4, drive.nmea, truth.csv, defects.geojson, boxes.csv, agent.toml, drive.json."""
    from edge_agent.lab.sim.drive import DriveSpec, simulate_drive
    from edge_agent.lab.sim.gnss_noise import NOISE_MODELS, is_noise_model

    if not is_noise_model(gps_noise_model):
        err.print(f"[red]--gps-noise-model {gps_noise_model!r}:[/red] expected one of {', '.join(NOISE_MODELS)}")
        raise typer.Exit(2)
    try:
        first = None if start is None else datetime.now(UTC) if start.strip().lower() == "now" else zoned_time(start)
    except ValueError as exc:
        err.print(f"[red]--start:[/red] {exc}")
        raise typer.Exit(2) from None
    spec = DriveSpec(out=out_dir, seed=seed, minutes=(duration / 60.0) if duration else minutes,
                     gps_noise_m=gps_noise_m, gps_noise_model=gps_noise_model, nmea_hz=nmea_hz, defects=defects,
                     potholes=potholes, fps=fps, width=width, height=height, start=first)
    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("render", total=None)

        def progress(done: int, total: int) -> None:
            if done == 1 or done % 15 == 0 or done == total:
                bar.update(task, completed=done, total=total)

        try:
            result = simulate_drive(spec, progress)
        except (OSError, RuntimeError, ValueError) as exc:
            err.print(f"[red]sim drive failed:[/red] {exc}")
            raise typer.Exit(1) from None
    table = Table(title=f"Simulated drive (seed {seed}) in {out_dir}")
    table.add_column("what")
    table.add_column("value", justify="right")
    n_pot = sum(f["properties"]["class"] == "pothole" for f in result.defects)
    for key, value in (("frames", f"{result.frames} at {fps:g} fps, {width}x{height}"),
                       ("distance", f"{result.distance_m:.0f} m"),
                       ("defects", f"{len(result.defects)} ({n_pot} potholes)"),
                       ("GNSS", f"{nmea_hz:g} Hz, {gps_noise_m:g} m RMS, {gps_noise_model}"),
                       ("render time", f"{result.seconds_rendering:.1f} s "
                                       f"({result.frames / max(result.seconds_rendering, 1e-9):.0f} fps)")):
        table.add_row(key, value)
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")
