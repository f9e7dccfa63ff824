"""`edge-agent gps replay|monitor`: replay a recording through the filter, or watch a live receiver."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edge_agent import config as agent_config
from edge_agent.commands import config_option
from edge_agent.config.gnss import GnssConfig
from edge_agent.gnss.epochs import Fix
from edge_agent.gnss.kalman import Pose, PositionFilter
from edge_agent.gnss.source import GnssReader, NmeaDecoder, decode_stream, open_input
from edge_agent.health import HealthBoard

gps_app = typer.Typer(help="GNSS: replay NMEA recordings, watch a live receiver.", no_args_is_help=True)
err = Console(stderr=True)


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _gnss_config(path: Path | None, overrides: dict[str, Any]) -> GnssConfig:
    """The [gnss] section of an agent config (defaults without one), with command-line overrides."""
    cfg = GnssConfig()
    if path is not None:
        try:
            cfg = agent_config.load(path).gnss
        except agent_config.ConfigError as exc:
            _fail(str(exc))
    return GnssConfig.model_validate({**cfg.model_dump(), **overrides})


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
    config: Path | None = config_option(None, "Agent config whose [gnss] filter settings to use"),
) -> None:
    """Parse a recording strictly, assemble epochs, filter them; one line per epoch, a summary on stderr."""
    cfg = _gnss_config(config, {"source": "stdin" if path == "-" else "file", "file": "" if path == "-" else path})
    try:
        stream = open_input(path)
    except OSError as exc:
        _fail(f"gps replay: cannot read {path}: {exc.strerror or exc}")
    decoder = NmeaDecoder(cfg, virtual_clock=True)
    try:
        for fix, pose in replay_records(stream, cfg, decoder, realtime):
            typer.echo(json.dumps(fix_record(fix, pose)) if as_json else _text_line(fix, pose))
    except BrokenPipeError:
        raise typer.Exit(0) from None  # the reader of stdout went away (| head): not an error
    except OSError as exc:
        _fail(f"gps replay: reading {path} failed: {exc.strerror or exc}")
    finally:
        if path != "-":
            stream.close()
    summary = decoder.summary()
    err.print("summary: " + " ".join(f"{k}={v}" for k, v in summary.items()), markup=False, highlight=False,
              soft_wrap=True)


def _monitor_table(reader: GnssReader, health: HealthBoard, fix: Fix | None, pose: Pose | None) -> Table:
    table = Table(title=f"GNSS {reader.where}  ({health.snapshot()['gnss']})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    summary = reader.decoder.summary()
    rows = [
        ("UTC", fix.utc.isoformat(timespec="milliseconds") if fix and fix.utc else "-"),
        ("mode", {0: "no fix", 2: "2D", 3: "3D"}.get(fix.mode, "?") + (" (dead reckoning)" if fix and fix.estimated
                                                                    else "") if fix else "-"),
        ("satellites / HDOP", f"{num(fix.sats if fix else None, 'd')} / {num(fix.hdop if fix else None, '.1f')}"),
        ("receiver lat, lon", f"{num(fix.lat if fix else None, '.7f')}, {num(fix.lon if fix else None, '.7f')}"),
        ("receiver ±m (eph)", num(fix.eph_m if fix else None, ".1f")),
        ("speed m/s / track", f"{num(fix.speed_mps if fix else None, '.2f')} / "
                              f"{num(fix.track_deg if fix else None, '.1f')}"),
        ("filtered lat, lon", f"{num(pose.lat if pose else None, '.7f')}, {num(pose.lon if pose else None, '.7f')}"),
        ("filtered ±m, heading", f"{num(pose.h_std_m if pose else None, '.1f')}, "
                                 f"{num(pose.heading_deg if pose else None, '.1f')}"),
        ("filter state", pose.state if pose else "-"),
        ("sentences / bad checksums", f"{summary['sentences']} / {summary['bad_checksums']}"),
        ("unknown types / malformed", f"{summary['unknown_types']} / {summary['malformed']}"),
        ("epochs / fixes", f"{summary['epochs']} / {summary['fixes']}"),
        ("reconnects", str(reader.reconnects)),
        ("filter outliers / resets", f"{reader.filter.stats.outliers} / "
                                     f"{sum(reader.filter.stats.resets.values())}"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table


@gps_app.command("monitor")
def monitor(
    port: str = typer.Option(None, "--port", help="Serial device of the receiver (default: the config's)"),
    baud: int = typer.Option(None, "--baud", help="Baud rate (default: the config's)"),
    gpsd: str = typer.Option(None, "--gpsd", help="Read gpsd's JSON at HOST:PORT instead of a serial port"),
    config: Path | None = config_option(None, "Agent config to take the [gnss] section from"),
    seconds: float = typer.Option(0.0, "--seconds", help="Stop after this long (0 = until Ctrl-C)"),
) -> None:
    """Live fixes for a technician: the receiver's view and the filter's, refreshed in a table."""
    updates: dict[str, Any] = {"source": "serial"}
    if port:
        updates["port"] = port
    if baud:
        updates["baud"] = baud
    if gpsd:
        host, _, gpsd_port = gpsd.rpartition(":")
        if not host or not gpsd_port.isdigit():
            _fail(f"--gpsd wants HOST:PORT, got {gpsd!r}")
        updates.update(source="gpsd", gpsd_host=host, gpsd_port=int(gpsd_port))
    cfg = _gnss_config(config, updates)
    health = HealthBoard()
    latest: dict[str, Any] = {"fix": None, "pose": None}
    reader = GnssReader(cfg, PositionFilter(cfg), health,
                        on_fix=lambda fix, pose: latest.update(fix=fix, pose=pose))
    reader.start()
    deadline = time.monotonic() + seconds if seconds > 0 else math.inf
    try:
        with Live(_monitor_table(reader, health, None, None), console=Console(), refresh_per_second=4) as live:
            while time.monotonic() < deadline and reader.alive:
                time.sleep(0.25)
                live.update(_monitor_table(reader, health, latest["fix"], latest["pose"]))
    except KeyboardInterrupt:
        pass
    finally:
        reader.stop()


def register(app: typer.Typer) -> None:
    app.add_typer(gps_app, name="gps")
