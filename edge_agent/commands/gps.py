"""`edge-agent gps replay|monitor`: replay a recording through the filter, or watch a live receiver."""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edge_agent import config as agent_config
from edge_agent.commands import config_option, finite
from edge_agent.config.gnss import GnssConfig
from edge_agent.gnss.epochs import Fix, fix_kind
from edge_agent.gnss.kalman import Pose, PositionFilter
from edge_agent.gnss.source import GnssReader, NmeaDecoder, decode_stream, open_input
from edge_agent.health import HealthBoard
from roadmon_contract.times import utc_iso

gps_app = typer.Typer(help="GNSS: replay NMEA recordings, watch a live receiver.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole (copy-paste)
# `monitor --seconds`: a day is longer than any technician's session at the receiver; watching for longer is
# the agent's job (its status file and doctor), and an endless run is --seconds 0 and Ctrl-C.
MAX_MONITOR_S = 86400.0
# How long monitor waits for gpsd to accept the connection before it says so.
GPSD_CONNECT_S = 3.0


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, exit status CODE (1: the receiver or a file; 2: a bad command-line value)."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _gnss_config(path: Path | None, overrides: dict[str, Any], given: dict[str, str] | None = None) -> GnssConfig:
    """The [gnss] section of an agent config (defaults without one), with command-line overrides. GIVEN maps an
    overridden setting to the option as typed (`baud` -> `--baud -5`), so that a value the settings refuse is
    one line naming that option, exit 2, not pydantic's traceback."""
    cfg = GnssConfig()
    if path is not None:
        try:
            cfg = agent_config.load(path).gnss
        except agent_config.ConfigError as exc:
            _fail(str(exc))
    try:
        return GnssConfig.model_validate({**cfg.model_dump(), **overrides})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            where = (given or {}).get(field, f"gnss.{field}")
            problems.append(f"{where}: {error['msg'].lower()} ({field})")
        _fail("; ".join(problems), code=2)


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
        "time": utc_iso(fix.utc) if fix.utc else None,
        "mode": fix.mode, "rtk": fix.rtk, "lat": _round(fix.lat, 8), "lon": _round(fix.lon, 8),
        "speed_mps": _round(fix.speed_mps, 3), "track_deg": _round(fix.track_deg, 2),
        "eph_m": _round(fix.eph_m, 2), "sats": fix.sats, "filtered": filtered,
    }


def replay_records(stream, cfg: GnssConfig, decoder: NmeaDecoder, realtime: bool = False):
    """(fix, pose) per epoch of a recording, on the virtual UTC clock; paced by UTC when realtime."""
    position_filter = PositionFilter(cfg)
    start: tuple[float, float] | None = None  # (monotonic clock, the recording's clock) at the first fix
    for fix in decode_stream(stream, decoder):
        placed = math.isfinite(fix.t_mono)
        if realtime and placed:
            if start is None:
                start = time.monotonic(), fix.t_mono
            wall0, virtual0 = start
            delay = (fix.t_mono - virtual0) - (time.monotonic() - wall0)
            if 0 < delay < 60:
                time.sleep(delay)
        yield fix, position_filter.update(fix) if placed else None


def _rtk(fix: Fix) -> str:
    return f" ({fix_kind(fix)})" if fix.rtk and fix.mode else ""


def _text_line(fix: Fix, pose: Pose | None) -> str:
    when = fix.utc.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if fix.utc else "(no date)".ljust(23)
    raw = f"{fix.lat:11.6f} {fix.lon:11.6f}" if fix.lat is not None else " " * 23
    if pose is None:
        return f"{when}  mode {fix.mode}{_rtk(fix)}  {raw}"
    heading = f"{pose.heading_deg:5.1f}" if pose.heading_deg is not None else "  -  "
    return (f"{when}  mode {fix.mode}{_rtk(fix)}  {raw}  -> {pose.lat:11.6f} {pose.lon:11.6f} "
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
        ("mode", fix_kind(fix) + (" (dead reckoning)" if fix.estimated else "") if fix else "-"),
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
    seconds: float = typer.Option(0.0, "--seconds", min=0, max=MAX_MONITOR_S, callback=finite,
                                  help="Stop after this long (0 = until Ctrl-C)"),
) -> None:
    """Live fixes for a technician: the receiver's view and the filter's, refreshed in a table."""
    updates: dict[str, Any] = {"source": "serial"}
    given: dict[str, str] = {}
    if port:
        updates["port"], given["port"] = port, f"--port {port}"
    if baud is not None:  # --baud 0 is a mistake to name, not "the config's"
        updates["baud"], given["baud"] = baud, f"--baud {baud}"
    if gpsd:
        host, _, gpsd_port = gpsd.rpartition(":")
        if not host or not gpsd_port.isdigit():
            _fail(f"--gpsd wants HOST:PORT, got {gpsd!r}")
        updates.update(source="gpsd", gpsd_host=host, gpsd_port=int(gpsd_port))
        given.update(gpsd_host=f"--gpsd {gpsd}", gpsd_port=f"--gpsd {gpsd}")
    cfg = _gnss_config(config, updates, given)
    _check_reachable(cfg)
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


def _check_reachable(cfg: GnssConfig) -> None:
    """Open the receiver's port (or connect to gpsd) once before watching it. The reader retries a missing port
    for ever, which is right for the agent (a receiver plugged in later) but left a technician looking at an
    empty table, and the command exited 0. Exit 1 with the reason instead."""
    if cfg.source == "gpsd":
        try:
            socket.create_connection((cfg.gpsd_host, cfg.gpsd_port), timeout=GPSD_CONNECT_S).close()
        except OSError as exc:  # refused, no route, unknown host, timed out
            _fail(f"gps monitor: cannot connect to gpsd at {cfg.gpsd_host}:{cfg.gpsd_port}: {_reason(exc)}")
        return
    import serial  # pyserial: only the serial source needs it

    if "://" not in cfg.port and not os.path.exists(cfg.port):  # plainer than pyserial's nested message
        _fail(f"gps monitor: cannot open {cfg.port}: no such device (is the receiver plugged in? `ls /dev/tty*`)")
    try:
        # As the reader opens it (exclusive): a port the running agent holds is refused here too, and says so.
        serial.serial_for_url(cfg.port, cfg.baud, timeout=0.05, exclusive=True).close()
    except (serial.SerialException, OSError, ValueError) as exc:
        _fail(f"gps monitor: cannot open {cfg.port}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """The errno's words (pyserial wraps them in its own), with what to do for the usual two."""
    code = getattr(exc, "errno", None)
    if code in (errno.EAGAIN, errno.EBUSY):
        return "in use by another program (is the agent running? stop it first)"
    if code == errno.EACCES:
        return "permission denied (this user needs to be in the port's group, usually dialout)"
    return os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)


def register(app: typer.Typer) -> None:
    app.add_typer(gps_app, name="gps")
