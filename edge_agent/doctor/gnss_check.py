"""Does the GNSS port open, does NMEA arrive, and how good is the fix?"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.config.gnss import GnssConfig
from edge_agent.doctor.agent_view import AgentView, running_agent
from edge_agent.doctor.result import CheckResult, Context, Level
from edge_agent.gnss.epochs import Fix, fix_kind
from edge_agent.gnss.source import FROZEN_AFTER, MOVING_MPS, NmeaDecoder, fixes_from_file, frozen_output
from edge_agent.link.writer_lock import holder

GOOD_HDOP = 2.5
JUNK_SHARE = 0.1  # more of the bytes than this outside sentences: not NMEA at this baud rate
BAD_CHECKSUM_SHARE = 0.05  # a sound cable loses hardly any sentence; more than this is noise on the wiring
SERIAL_HINT = ("check `ls -l /dev/serial/by-id/` for the receiver's port and set gnss.port to it; the user needs "
               "the 'dialout' group; a running agent holds the port: `sudo systemctl stop edge-agent` first")


# (explanation, hint) of each "no usable NMEA" verdict, for a live receiver and for a recording (gnss.file).
SILENT = ("the receiver is silent: unpowered, wrong port, or it talks on another interface", SERIAL_HINT)
EMPTY = ("the recording holds not one byte, so the agent has no positions to give its detections",
         "set gnss.file to the drive's NMEA recording (`ls -l` shows its size)")
CHECKSUMS = ("the sentences are well formed, so the baud rate is right, but their checksums fail: a receiver or "
             "firmware fault, or noise on the wiring",
             "check the cable and its ground (shielded, short, away from power leads); try another receiver or "
             "update its firmware")
RECORDED_CHECKSUMS = ("the recording holds well-formed sentences whose checksums all fail: it was recorded through "
                      "a faulty receiver or wiring, or altered since",
                      "use another recording of the drive, or check the receiver that recorded it")
NOT_NMEA = ("bytes without valid sentences: the baud rate is wrong, or the receiver sends only a binary protocol "
            "(UBX, SiRF)", "try gnss.baud = {others} (4800: older Garmin, SiRF and BU-353 units; 9600: most "
            "u-blox and MediaTek); enable NMEA output in the receiver's tool")
RECORDED_NOT_NMEA = ("the file holds no NMEA: a binary log (UBX, SiRF), another kind of file, or bytes recorded "
                     "at a wrong baud rate", "set gnss.file to a text NMEA recording ($GPGGA/$GPRMC lines)")
COMMON_BAUDS = (4800, 9600, 38400, 115200)
FROZEN = ("its output is stuck: the agent uses none of it, and detections made now go on no map",
          "power-cycle the receiver (unplug its USB cable); if it comes back frozen, its firmware or the USB adapter "
          "is at fault")


class _Silent(Exception):
    pass


def _listen(read: Callable[[], bytes], cfg: GnssConfig, seconds: float) -> tuple[NmeaDecoder, list[Fix], int]:
    """Read until the fix is known or SECONDS passed; (decoder, fixes, bytes)."""
    decoder = NmeaDecoder(cfg)
    fixes: list[Fix] = []
    got = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = read()
        now = time.monotonic() - cfg.receiver_latency_s
        if data:
            got += len(data)
            fixes += decoder.feed(data, now)
        else:
            fixes += decoder.close_epoch()
        if (len(fixes) >= FROZEN_AFTER and fixes[-1].mode >= 2 and not _maybe_stuck(fixes)) or \
                (len(fixes) >= 3 and all(f.mode < 2 for f in fixes)):
            # A located fix (seen as often as it takes to tell a frozen receiver), or three epochs in a row
            # without one: a snapshot is all doctor gives.
            break
    fixes += decoder.close_epoch()
    return decoder, fixes, got


def _maybe_stuck(fixes: list[Fix]) -> bool:
    """The last fix repeats the one before at speed, and not yet for long enough to call it stuck: read on."""
    last, before = fixes[-1], fixes[-2]
    return (last.lat, last.lon) == (before.lat, before.lon) and (last.speed_mps or 0.0) >= MOVING_MPS and \
        frozen_output(fixes) is None


def _read_serial(cfg: GnssConfig, seconds: float) -> tuple[NmeaDecoder, list[Fix], int]:
    import serial

    with serial.serial_for_url(cfg.port, cfg.baud, timeout=0.2) as port:
        return _listen(lambda: port.read(4096), cfg, seconds)


def _read_gpsd(cfg: GnssConfig, seconds: float) -> tuple[NmeaDecoder, list[Fix], int]:
    with socket.create_connection((cfg.gpsd_host, cfg.gpsd_port), timeout=3) as sock:
        # gpsd relays the receiver's raw NMEA when asked, so the same decoder judges it.
        sock.sendall(b'?WATCH=' + json.dumps({"enable": True, "nmea": True}).encode() + b";\n")
        sock.settimeout(0.3)

        def read() -> bytes:
            try:
                return sock.recv(4096)
            except TimeoutError:
                return b""

        return _listen(read, cfg, seconds)


def _quality(fix: Fix) -> str:
    parts = [fix_kind(fix)]
    if fix.sats is not None:
        parts.append(f"{fix.sats} sats")
    if fix.hdop is not None:
        parts.append(f"HDOP {fix.hdop:.1f}")
    if fix.eph_m is not None:
        parts.append(f"±{fix.eph_m:.{2 if fix.eph_m < 1 else 1}f} m")
    return ", ".join(parts)


def _not_nmea(baud: int) -> tuple[str, str]:
    """NOT_NMEA with the common rates other than BAUD, the one that failed."""
    others = [b for b in COMMON_BAUDS if b != baud]
    return NOT_NMEA[0], NOT_NMEA[1].format(others=", ".join(map(str, others[:-1])) + f" or {others[-1]}")


def _only_checksums_fail(stats: dict[str, int], got: int) -> bool:
    """Sentences arrive ($...*hh lines) and little else, yet no checksum matches. A wrong baud rate gives
    mostly junk instead: lines without a '$', which the parser counts as junk bytes."""
    return stats["bad_checksums"] > 0 and stats["junk_bytes"] <= JUNK_SHARE * got


def _no_nmea(where: str, stats: dict[str, int], got: int, live: bool, ctx: Context) -> CheckResult | None:
    """The red verdict when not one valid sentence came, else None. A recording gets the same verdicts as a
    live receiver, with advice about the file instead of the port."""
    data = {"source": where, "bytes": got, **stats}
    if got == 0:
        summary = (f"{where}: opened, but not one byte in {ctx.options.gnss_seconds:.0f} s" if live
                   else f"{where}: empty recording")
        return CheckResult("gnss", Level.RED, summary, *(SILENT if live else EMPTY), data)
    if stats["sentences"] == 0 and _only_checksums_fail(stats, got):
        return CheckResult("gnss", Level.RED, f"{where}: {stats['bad_checksums']} NMEA sentences, every checksum "
                           "wrong", *(CHECKSUMS if live else RECORDED_CHECKSUMS), data)
    if stats["sentences"] == 0:
        assert ctx.cfg is not None  # check_gnss runs with a config, like every check after the config's
        return CheckResult("gnss", Level.RED, f"{where}: {got} bytes but no valid NMEA sentence",
                           *(_not_nmea(ctx.cfg.gnss.baud) if live else RECORDED_NOT_NMEA), data)
    return None


def _judge(where: str, decoder: NmeaDecoder, fixes: list[Fix], got: int, live: bool, ctx: Context) -> CheckResult:
    stats = decoder.summary()
    verdict = _no_nmea(where, stats, got, live, ctx)
    if verdict is not None:
        return verdict
    data = {"source": where, "bytes": got, **stats}
    ctx.gnss_no_time = "the GNSS check saw no complete epoch"
    if not fixes:
        return CheckResult("gnss", Level.YELLOW, f"{where}: {stats['sentences']} NMEA sentences, no complete epoch",
                           "NMEA arrives, but no epoch with a time was seen yet", "wait a minute and run again", data)
    fix = fixes[-1]
    data.update(mode=fix.mode, rtk=fix.rtk, sats=fix.sats, hdop=fix.hdop, eph_m=fix.eph_m, lat=fix.lat, lon=fix.lon,
                utc=fix.utc.isoformat() if fix.utc else None)
    frozen = frozen_output(fixes) if live else None
    if frozen is not None:
        # Its clock is not the receiver's to judge either: the clock check said "42 s off, follow the receiver".
        ctx.gnss_no_time = "the receiver's output is frozen"
        return CheckResult("gnss", Level.RED, f"{where}: {frozen}", *FROZEN, data)
    if live and fix.utc is not None:
        ctx.gnss_utc, ctx.gnss_utc_mono = fix.utc, fix.t_mono
    elif not live:  # a recording's UTC is when it was recorded, not now: the clock check must not compare
        ctx.gnss_no_time = f"GNSS is a recording ({where}), whose time is the drive's, not now"
    else:
        ctx.gnss_no_time = "the receiver's epochs carry no UTC yet"
    summary = f"{where}: {stats['sentences']} NMEA sentences, {_quality(fix)}"
    if stats["bad_checksums"]:
        summary += f", {stats['bad_checksums']} bad checksums"
    if fix.mode < 2 or fix.lat is None:
        return CheckResult("gnss", Level.YELLOW, summary,
                           "the receiver talks but has no position: no sky view, or a cold start (up to a minute, "
                           "longer indoors)", "put the antenna where it sees the sky (roof, windscreen) and wait",
                           data)
    if fix.estimated:  # dead reckoning, a position typed in, or a receiver's demo mode: the filter uses none
        return CheckResult("gnss", Level.YELLOW, summary + ", not measured (dead reckoning, manual or simulator "
                           "mode)", "the receiver sends positions it did not measure, which the agent does not use: "
                           "defects seen now wait for a real fix",
                           "give the antenna a view of the sky; a receiver left in demo/simulator mode (a Garmin's "
                           "setup menu) must be set back to normal", data)
    bad_share = stats["bad_checksums"] / max(1, stats["bad_checksums"] + stats["sentences"])
    if bad_share > BAD_CHECKSUM_SHARE:  # a flaky cable passed as OK while it lost a sentence in two
        return CheckResult("gnss", Level.YELLOW, summary + f" ({bad_share:.0%} of the sentences)",
                           "sentences are lost to noise on the wiring: fixes go missing on the road",
                           (CHECKSUMS if live else RECORDED_CHECKSUMS)[1], data)
    if fix.mode == 2 or (fix.hdop is not None and fix.hdop > GOOD_HDOP):
        return CheckResult("gnss", Level.YELLOW, summary,
                           "a weak fix places defects metres off", "give the antenna a clearer view of the sky", data)
    return CheckResult("gnss", Level.GREEN, summary, data=data)


def _as_the_agent_sees_it(agent: AgentView, port: str, ctx: Context) -> CheckResult:
    """The receiver as the running agent reads it (it holds the port: opening it here would steal bytes)."""
    state = agent.health("gnss")
    offset = agent.status.get("clock_offset_vs_gnss_s")
    if isinstance(offset, int | float):  # the agent compared the clock with the receiver: the clock check judges it
        ctx.gnss_utc, ctx.gnss_utc_mono = datetime.now(UTC) - timedelta(seconds=offset), time.monotonic()
    else:
        ctx.gnss_no_time = f"the running agent (pid {agent.pid}) holds the receiver and has no fix to compare with"
    where = f"{port}, held by the running agent (pid {agent.pid})"
    unplaced = agent.counter("events_no_fix")
    data = {"source": "agent", "pid": agent.pid, "state": state, "last_fix_at": agent.status.get("last_fix_at"),
            "events_no_fix": unplaced}
    kind = agent.health("gnss_fix") if state == "ok" else "unknown"  # RTK fixed, 3D fix...
    summary = f"{where}: {state}" + (f" ({kind})" if kind != "unknown" else "") + \
        f", last fix {agent.last_fix}" + (f", {unplaced} defects seen but not placed" if unplaced else "")
    undated = agent.counter("events_clock_dated")
    data["events_clock_dated"] = undated
    if state == "ok" and undated:
        return CheckResult("gnss", Level.YELLOW, summary + f", {undated} events dated by the box's clock",
                           "the receiver sends positions without a date (GGA only: no RMC or ZDA), so each event "
                           "waits events.hold_for_fix_s for one and is then dated by the system clock",
                           "enable RMC (or ZDA) output on the receiver (u-center, or its PMTK/UBX setup command)",
                           data)
    if state == "ok":
        return CheckResult("gnss", Level.GREEN, summary, data=data)
    problem = (agent.status.get("health") or {}).get("gnss_problem")
    data["problem"] = problem
    if state == "frozen":
        return CheckResult("gnss", Level.RED, summary, f"{problem or 'the receiver repeats one fix'}; {FROZEN[0]}",
                           FROZEN[1], data)
    if state in ("lost", "unknown"):
        return CheckResult("gnss", Level.RED, summary, "the agent gets no usable NMEA from the receiver: "
                           f"{problem or SILENT[0]}; detections made now go on no map",
                           "`journalctl -u edge-agent | grep GNSS` says what the reader saw; check the antenna "
                           "cable and `ls -l /dev/serial/by-id/`", data)
    return CheckResult("gnss", Level.YELLOW, summary,
                       "the receiver talks but the agent has no position from it yet (no sky view, a cold start, "
                       "or a fix too old or uncertain to place a defect)",
                       "put the antenna where it sees the sky and wait a minute", data)


def check_gnss(ctx: Context) -> CheckResult:
    assert ctx.cfg is not None
    cfg = ctx.cfg.gnss
    ctx.gnss_no_time = "the GNSS check found no usable NMEA"  # until a verdict below says better
    if cfg.source == "serial" and (agent := running_agent(ctx)) is not None:
        return _as_the_agent_sees_it(agent, cfg.port, ctx)
    if cfg.source == "serial" and (pid := holder(ctx.cfg.outbox_path)) is not None:
        # The agent runs but writes no status (its uplink is off): opening the port beside it (as root the
        # port's exclusive lock does not hold) would take sentences from it.
        ctx.gnss_no_time = f"the running agent (pid {pid}) holds the receiver"
        return CheckResult("gnss", Level.YELLOW, f"{cfg.port}, held by the running agent (pid {pid}), which "
                           "writes no status (uplink.enabled = false)", "doctor cannot see what the agent reads, "
                           "and does not open the port beside it", "stop the agent for this check (`sudo "
                           "systemctl stop edge-agent`), or enable the uplink: its status then says", {"pid": pid})
    if cfg.source == "stdin":
        return CheckResult("gnss", Level.YELLOW, "gnss.source is stdin: nothing to open",
                           "stdin is for piping a recording in by hand", "use source = serial, gpsd or file")
    if cfg.source == "file":
        try:
            decoder = NmeaDecoder(cfg, virtual_clock=True)
            fixes = list(fixes_from_file(cfg.file, cfg, decoder))
            size = Path(cfg.file).stat().st_size  # every byte was read: the verdicts weigh junk against it
        except OSError as exc:
            return CheckResult("gnss", Level.RED, f"cannot read the NMEA recording {cfg.file!r}: {exc.strerror}",
                               "the agent has no positions to give its detections", "set gnss.file to a recording")
        return _judge(f"recording {cfg.file}", decoder, fixes, size, False, ctx)
    try:
        if cfg.source == "gpsd":
            where = f"gpsd {cfg.gpsd_host}:{cfg.gpsd_port}"
            decoder, fixes, got = _read_gpsd(cfg, ctx.options.gnss_seconds)
        else:
            where = f"{cfg.port} @ {cfg.baud} baud"
            decoder, fixes, got = _read_serial(cfg, ctx.options.gnss_seconds)
    except OSError as exc:  # serial.SerialException is an OSError too
        hint = "start gpsd (`systemctl status gpsd`) or check gnss.gpsd_host/port" if cfg.source == "gpsd" else (
            SERIAL_HINT)
        where = f"gpsd {cfg.gpsd_host}:{cfg.gpsd_port}" if cfg.source == "gpsd" else cfg.port
        return CheckResult("gnss", Level.RED, f"cannot open {where}: {exc}",
                           "the agent has no positions to give its detections", hint, {"source": where})
    return _judge(where, decoder, fixes, got, True, ctx)
