"""`edge-agent gps replay|monitor`: replay a recording through the filter, or watch a live receiver."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import typer
from rich.console import Console

from edge_agent.config.gnss import GnssConfig
from edge_agent.epochs import Fix
from edge_agent.gnss_source import NmeaDecoder, decode_stream, open_input
from edge_agent.kalman import Pose, PositionFilter

gps_app = typer.Typer(help="GNSS: replay NMEA recordings, watch a live receiver.", no_args_is_help=True)
err = Console(stderr=True)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def fix_record(fix: Fix, pose: Pose | None) -> dict[str, Any]:
    """The fixed per-epoch output format of `gps replay --json`."""
    filtered = None
    if pose is not None:
        filtered = {
            "lat": round(pose.lat, 8), "lon": round(pose.lon, 8), "speed_mps": round(pose.speed_mps, 3),
            "heading_deg": _round(pose.heading_deg, 2), "h_std_m": round(pose.h_std_m, 2), "state": pose.state,
        }
    return {
        "time": fix.utc.isoformat(timespec="milliseconds").replace("+00:00", "Z") if fix.utc else None,
        "mode": fix.mode, "lat": _round(fix.lat, 8), "lon": _round(fix.lon, 8),
        "speed_mps": _round(fix.speed_mps, 3), "track_deg": _round(fix.track_deg, 2),
        "eph_m": _round(fix.eph_m, 2), "sats": fix.sats, "filtered": filtered,
    }


def replay_records(stream, cfg: GnssConfig, decoder: NmeaDecoder, realtime: bool = False):
    """(fix, pose) per epoch of a recording, on the virtual UTC clock; paced by UTC when realtime."""
    position_filter = PositionFilter(cfg)
    wall0 = virtual0 = None
    for fix in decode_stream(stream, decoder):
        placed = math.isfinite(fix.t_mono)
        if realtime and placed:
            if wall0 is None:
                wall0, virtual0 = time.monotonic(), fix.t_mono
            delay = (fix.t_mono - virtual0) - (time.monotonic() - wall0)
            if 0 < delay < 60:
                time.sleep(delay)
        yield fix, position_filter.update(fix) if placed else None


def _text_line(fix: Fix, pose: Pose | None) -> str:
    when = fix.utc.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if fix.utc else "(no date)".ljust(23)
    raw = f"{fix.lat:11.6f} {fix.lon:11.6f}" if fix.lat is not None else " " * 23
    if pose is None:
        return f"{when}  mode {fix.mode}  {raw}"
    heading = f"{pose.heading_deg:5.1f}" if pose.heading_deg is not None else "  -  "
    return (f"{when}  mode {fix.mode}  {raw}  -> {pose.lat:11.6f} {pose.lon:11.6f} "
            f"{pose.speed_mps:6.2f} m/s {heading} deg ±{pose.h_std_m:6.1f} m {pose.state}")


@gps_app.command("replay")
def replay(
    path: str = typer.Argument(..., help="NMEA recording, or - for stdin"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per epoch (the stable format)"),
    realtime: bool = typer.Option(False, "--realtime", help="Pace the output by the recording's UTC times"),
) -> None:
    """Parse a recording strictly, assemble epochs, filter them; one line per epoch, a summary on stderr."""
    cfg = GnssConfig(source="stdin" if path == "-" else "file", file="" if path == "-" else path)
    try:
        stream = open_input(path)
    except OSError as exc:
        err.print(f"gps replay: cannot read {path}: {exc.strerror or exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    decoder = NmeaDecoder(cfg, virtual_clock=True)
    try:
        for fix, pose in replay_records(stream, cfg, decoder, realtime):
            typer.echo(json.dumps(fix_record(fix, pose)) if as_json else _text_line(fix, pose))
    except BrokenPipeError:
        raise typer.Exit(0) from None  # the reader of stdout went away (| head): not an error
    except OSError as exc:
        err.print(f"gps replay: reading {path} failed: {exc.strerror or exc}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    finally:
        if path != "-":
            stream.close()
    summary = decoder.summary()
    err.print("summary: " + " ".join(f"{k}={v}" for k, v in summary.items()), markup=False, highlight=False,
              soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(gps_app, name="gps")
