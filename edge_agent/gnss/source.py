"""Where fixes come from: recordings (`fixes_from_file`) and live sources (`GnssReader`).

Every source ends in the same `NmeaDecoder` (lines -> strict sentences -> epochs -> Fix), except gpsd, whose
JSON reports are already epochs. Recordings are stamped on a virtual clock (seconds of UTC since 2000-01-01)
so that a video's frame times map onto them through UTC; live fixes are stamped with time.monotonic() at the
arrival of the epoch's first sentence, minus the configured receiver latency.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from itertools import pairwise, takewhile
from pathlib import Path
from typing import IO, Any

from edge_agent.config.gnss import GnssConfig
from edge_agent.gnss.epochs import EpochAssembler, Fix, fix_kind
from edge_agent.gnss.kalman import Pose, PositionFilter
from edge_agent.gnss.nmea import LineSplitter, NmeaParser, ParseStats
from edge_agent.health import HealthBoard
from roadmon_contract.decode import decode_json

log = logging.getLogger(__name__)

CHUNK = 1 << 16
FROZEN_AFTER = 3  # epochs in a row with one UTC: the receiver repeats its last fix (a hung firmware, a stuck mux)
# A receiver repeating one position while its speed says it moved this far since, at MOVING_MPS or more at
# every epoch: stuck. A coarse receiver's 3-decimal minutes are 1.8 m (one position over a few epochs at walking
# pace is no fault), and a parked one reports a speed of noise (0.1-0.5 m/s) that summed to 20 m in a minute.
STUCK_M = 20.0
MOVING_MPS = 1.0


class NmeaDecoder:
    """Bytes in, Fixes out: line splitting, strict parsing and epoch assembly, with all their counters."""

    def __init__(self, cfg: GnssConfig | None = None, virtual_clock: bool = False) -> None:
        cfg = cfg or GnssConfig()
        self.parse_stats = ParseStats()
        self._splitter = LineSplitter(self.parse_stats)
        self._parser = NmeaParser(cfg.max_sentence_chars, self.parse_stats)
        self.assembler = EpochAssembler(uere_m=cfg.uere_m, date_floor=cfg.date_floor_for(live=not virtual_clock),
                                        virtual_clock=virtual_clock)

    def feed(self, data: bytes, t_arrival: float = 0.0) -> list[Fix]:
        fixes = []
        parse, add = self._parser.parse_line, self.assembler.feed
        for line in self._splitter.feed(data):
            sentence = parse(line)
            if sentence is not None:
                fix = add(sentence, t_arrival)
                if fix is not None:
                    fixes.append(fix)
        return fixes

    def close_epoch(self) -> list[Fix]:
        """The line went idle: the open epoch is complete."""
        fix = self.assembler.close()
        return [fix] if fix is not None else []

    def flush(self) -> list[Fix]:
        """End of input: the unterminated last line and the open epoch."""
        fixes = []
        for line in self._splitter.flush():
            sentence = self._parser.parse_line(line)
            if sentence is not None:
                fix = self.assembler.feed(sentence)
                if fix is not None:
                    fixes.append(fix)
        return fixes + self.close_epoch()

    def summary(self) -> dict[str, int]:
        p, e = self.parse_stats, self.assembler.stats
        return {
            "sentences": p.sentences, "bad_checksums": p.bad_checksum, "unknown_types": p.unknown_type,
            "epochs": e.epochs, "fixes": e.fixes, "malformed": p.malformed + p.no_checksum, "too_long": p.too_long,
            "proprietary": p.proprietary, "other_types": p.other_types, "junk_bytes": p.junk_bytes,
            "no_date": e.no_date, "time_backwards": e.time_backwards,
        }


def open_input(path: str | Path) -> IO[bytes]:
    """A recording, or stdin for '-'. Raises OSError for an unreadable path."""
    if str(path) == "-":
        return sys.stdin.buffer
    return open(path, "rb")


def decode_stream(stream: IO[bytes], decoder: NmeaDecoder) -> Iterator[Fix]:
    """Every epoch of a byte stream in order (including those without a date, t_mono NaN)."""
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        yield from decoder.feed(chunk)
    yield from decoder.flush()


def fixes_from_file(path: str | Path, cfg: GnssConfig | None = None,
                    decoder: NmeaDecoder | None = None) -> Iterator[Fix]:
    """The epochs of a recording, stamped on the virtual clock (seconds of UTC since 2000-01-01).

    Epochs before the recording's first date cannot be placed on that clock and are left out (counted in
    the decoder's `no_date`). '-' reads stdin.
    """
    decoder = decoder or NmeaDecoder(cfg, virtual_clock=True)
    stream = open_input(path)
    try:
        for fix in decode_stream(stream, decoder):
            if math.isfinite(fix.t_mono):
                yield fix
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


# --- gpsd


def frozen_output(last: Sequence[Fix]) -> str | None:
    """Why the receiver's latest fixes (oldest first) are a frozen output, else None. Repeating one fix read "ok",
    the filter reset on it every few seconds and doctor blamed the box's clock; repeating one position with a
    fresh time and a speed placed every detection of those seconds on the spot where it stuck."""
    newest_first = list(reversed(last))
    if len(newest_first) < FROZEN_AFTER or any(f.mode == 0 for f in newest_first[:FROZEN_AFTER]):
        return None  # no fix: "no_fix" says it
    fix = newest_first[0]
    if fix.utc is not None and all(f.utc == fix.utc for f in newest_first[:FROZEN_AFTER]):
        return f"the receiver repeats one fix, its time standing at {fix.utc:%H:%M:%S} UTC"
    run = list(takewhile(lambda f: f.mode > 0 and (f.lat, f.lon) == (fix.lat, fix.lon)
                         and (f.speed_mps or 0.0) >= MOVING_MPS, newest_first))
    moved = sum((earlier.speed_mps or 0.0) * (later.t_mono - earlier.t_mono) for later, earlier in pairwise(run))
    if len(run) >= FROZEN_AFTER and moved >= STUCK_M:
        return f"the receiver repeats one position while its speed says it moved {moved:.0f} m"
    return None


# gpsd's TPV `status` (gps.h STATUS_*): 3 RTK fixed, 4 RTK float, 5 dead reckoning only, 6 GNSS + dead
# reckoning (measured: the receiver fuses both), 8 simulated.
GPSD_RTK = {3: "rtk_fixed", 4: "rtk_float"}
GPSD_NOT_MEASURED = frozenset({5, 8})


def fix_from_tpv(report: dict[str, Any], t_mono: float) -> Fix | None:
    """A gpsd TPV report -> Fix (None for other classes). eph: gpsd's eph, else epx/epy combined."""
    if report.get("class") != "TPV":
        return None

    def number(key: str, low: float, high: float) -> float | None:
        value = report.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        value = float(value)
        return value if math.isfinite(value) and low <= value <= high else None

    mode = int(report["mode"]) if report.get("mode") in (2, 3) else 0
    lat, lon = number("lat", -90, 90), number("lon", -180, 180)
    if lat is None or lon is None:
        mode = 0
    utc = None
    if isinstance(report.get("time"), str):
        try:
            utc = dt.datetime.fromisoformat(report["time"].replace("Z", "+00:00")).astimezone(dt.UTC)
        except ValueError:
            utc = None
    eph = number("eph", 0, 1e5)
    epx, epy = number("epx", 0, 1e5), number("epy", 0, 1e5)
    if eph is None and epx is not None and epy is not None:
        eph = math.hypot(epx, epy)
    eph = eph or None  # 0 m: no error model, not a perfect fix
    track = number("track", 0, 360)
    altitude = number("altMSL", -1000, 1e5)
    if altitude is None:
        altitude = number("alt", -1000, 1e5)  # gpsd before 3.20 only sends alt
    status = _tpv_status(report)
    return Fix(
        utc=utc, t_mono=t_mono, mode=mode, lat=lat if mode else None, lon=lon if mode else None,
        alt_m=altitude if mode == 3 else None,
        speed_mps=number("speed", 0, 600) if mode else None, track_deg=track % 360 if mode and track is not None
        else None, eph_m=eph if mode else None, hdop=None, sats=None,
        estimated=status in GPSD_NOT_MEASURED, rtk=GPSD_RTK.get(status) if mode and status is not None else None,
    )


def _tpv_status(report: dict[str, Any]) -> int | None:
    """gpsd's TPV status code, or None. Anything but an integer is junk: a list or object there (unhashable)
    raised TypeError in the lookups and dropped the whole gpsd connection over one line."""
    status = report.get("status")
    return status if isinstance(status, int) and not isinstance(status, bool) else None


# --- live reader


class _Lost(Exception):
    """The source went away (unplugged, closed, silent); reopen it."""


class GnssReader:
    """A thread that reads the configured source, feeds the filter and reports on the health board.

    Serial ports and gpsd are reopened with a doubling backoff when they fail or fall silent; stdin and a file
    end at EOF. Live fixes are stamped time.monotonic() at the arrival of the epoch's first bytes minus
    `receiver_latency_s`; a file replayed in real time is stamped when each fix is released, a file replayed
    as fast as possible keeps the recording's virtual clock.
    """

    def __init__(self, cfg: GnssConfig, position_filter: PositionFilter, health: HealthBoard | None = None,
                 on_fix: Callable[[Fix, Pose | None], None] | None = None) -> None:
        self.cfg = cfg
        self.filter = position_filter
        self.health = health
        self.on_fix = on_fix
        self.decoder = NmeaDecoder(cfg)
        self.reconnects = 0
        self.last_fix: Fix | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session_had_data = False
        self._good_fix_at: float | None = None  # monotonic time of the last fix that made the state "ok"
        self._recent: deque[Fix] = deque(maxlen=100)  # 10 s of a 10 Hz receiver
        self._frozen = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gnss-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the loop

    def _run(self) -> None:
        source = {"serial": self._serial_session, "gpsd": self._gpsd_session,
                  "stdin": self._stdin_session, "file": self._file_session}[self.cfg.source]
        endless = self.cfg.source in ("serial", "gpsd")
        delay = self.cfg.reconnect_min_s
        failures = 0
        while not self._stop.is_set():
            self._session_had_data = False
            try:
                source()
            except Exception as exc:  # a reader must outlive any source failure
                self._set_health("lost")
                if self.health is not None:  # what doctor and status quote: junk bytes are not silence
                    self.health.update(gnss_problem=str(exc))
                self._count("gnss_source_errors")
                if self._session_had_data:  # it worked for a while: start the backoff over
                    delay, failures = self.cfg.reconnect_min_s, 0
                failures += 1
                # Say it once loudly, then only now and then: an unplugged receiver must not flood the journal.
                level = logging.WARNING if failures == 1 or failures % 100 == 0 else logging.DEBUG
                log.log(level, "GNSS %s: %s; retrying in %.1f s (attempt %d)", self.where, exc, delay, failures)
            if not endless or self._stop.wait(delay):
                break
            self.reconnects += 1
            self._count("gnss_reconnects")
            delay = min(delay * 2, self.cfg.reconnect_max_s)
        self._emit(self.decoder.flush())

    @property
    def where(self) -> str:
        return {"serial": self.cfg.port, "gpsd": f"gpsd {self.cfg.gpsd_host}:{self.cfg.gpsd_port}",
                "stdin": "stdin", "file": self.cfg.file}[self.cfg.source]

    def _serial_session(self) -> None:
        import serial  # pyserial: only the serial source needs it

        try:
            # exclusive: a second program on the same port would steal half of every sentence.
            port = serial.serial_for_url(self.cfg.port, self.cfg.baud, timeout=0.05, exclusive=True)
        except (serial.SerialException, OSError) as exc:
            raise _Lost(f"cannot open: {exc}") from None
        log.info("GNSS %s open at %d baud", self.cfg.port, self.cfg.baud)
        with port:
            # Whatever is waiting, else block until the first byte: stamps then follow arrival within a few ms.
            self._pump(lambda: port.read(min(max(1, port.in_waiting), 4096)))

    def _stdin_session(self) -> None:
        stream = sys.stdin.buffer
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # not a real file (an in-memory stream): reads never block for long
            fd = None

        def read() -> bytes | None:
            if fd is not None and not select.select([fd], [], [], 0.05)[0]:
                return None  # nothing yet: lets the loop close idle epochs and notice stop()
            return stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)

        self._pump(read, eof_ends=True)

    def _pump(self, read: Callable[[], bytes | None], eof_ends: bool = False) -> None:
        """Read until stopped (or EOF when EOF_ENDS); close epochs on idle lines. A port that raises, or stays
        silent for `no_data_timeout_s`, raises _Lost. READ returns b"" or None when nothing came; with EOF_ENDS,
        b"" is the end of the input and None a quiet moment."""
        cfg = self.cfg
        last_data = last_sentence = time.monotonic()
        stats = self.decoder.parse_stats
        sentences, junk = stats.sentences, 0
        self._set_health_opened()
        while not self._stop.is_set():
            try:
                data = read()
            except OSError as exc:  # serial.SerialException is an OSError: unplugged
                raise _Lost(str(exc)) from None
            now = time.monotonic()
            if data:
                last_data = now
                self._emit(self.decoder.feed(data, now - cfg.receiver_latency_s))
                if stats.sentences > sentences:
                    sentences, junk, last_sentence = stats.sentences, 0, now
                    if not self._session_had_data:
                        self._heard()
                    self._session_had_data = True
                    self._fix_gone(now)
                else:
                    junk += len(data)
                # Bytes that never make a sentence (a wrong baud rate, another protocol) are no better than
                # silence: without this the health stayed "starting" for ever and nothing was logged.
                if not eof_ends and now - last_sentence >= cfg.no_data_timeout_s:
                    raise _Lost(f"{junk} bytes in {now - last_sentence:.0f} s but not one valid NMEA sentence "
                                f"({stats.bad_checksum} bad checksums so far): wrong baud rate (gnss.baud "
                                f"{cfg.baud}), or not an NMEA receiver?")
                continue
            if eof_ends and data is not None:
                return
            if now - last_data >= cfg.epoch_idle_s:
                self._emit(self.decoder.close_epoch())
            if not eof_ends and now - last_data >= cfg.no_data_timeout_s:
                raise _Lost(f"no data for {cfg.no_data_timeout_s:.0f} s")

    def _file_session(self) -> None:
        decoder = NmeaDecoder(self.cfg, virtual_clock=True)
        self.decoder = decoder
        start: tuple[float, float] | None = None  # (monotonic clock, the file's clock) at the first fix
        for fix in fixes_from_file(self.cfg.file, self.cfg, decoder):
            if self._stop.is_set():
                return
            if self.cfg.realtime:
                if start is None:
                    start = time.monotonic(), fix.t_mono
                wall0, virtual0 = start
                if self._stop.wait(max(0.0, (fix.t_mono - virtual0) - (time.monotonic() - wall0))):
                    return
                fix = replace(fix, t_mono=time.monotonic())
            self._emit([fix])

    def _gpsd_session(self) -> None:
        cfg = self.cfg
        try:
            sock = socket.create_connection((cfg.gpsd_host, cfg.gpsd_port), timeout=3)
        except OSError as exc:
            raise _Lost(f"cannot connect: {exc}") from None
        with sock:
            sock.sendall(b'?WATCH={"enable":true,"json":true};\n')
            sock.settimeout(0.2)
            buffer = b""
            last_data = time.monotonic()
            self._set_health_opened()
            while not self._stop.is_set():
                try:
                    data = sock.recv(65536)
                    if not data:
                        raise _Lost("gpsd closed the connection")
                except TimeoutError:
                    data = b""
                now = time.monotonic()
                if not data:
                    if now - last_data >= cfg.no_data_timeout_s:
                        raise _Lost(f"no data for {cfg.no_data_timeout_s:.0f} s")
                    continue
                last_data = now
                self._session_had_data = True
                *lines, buffer = (buffer + data).split(b"\n")
                for line in lines:
                    self._gpsd_line(line, now - cfg.receiver_latency_s)
                if len(buffer) > 1 << 20:
                    buffer = b""

    def _gpsd_line(self, line: bytes, t_mono: float) -> None:
        try:
            report = decode_json(line)  # bounded: a line nested 1,000 deep raised RecursionError
        except ValueError:
            self._count("gpsd_bad_json")
            return
        fix = fix_from_tpv(report, t_mono) if isinstance(report, dict) else None
        if fix is not None:
            self._emit([fix])

    # --- results

    def _fix_gone(self, now: float) -> None:
        """Sentences keep coming but no fix has for no_data_timeout_s: "no_fix". Receivers that lose the fix send
        their empty sentences without a time (`$GPRMC,,V,...`), which make no epoch, so the state stayed "ok"
        for as long as they talked."""
        if self.health is None or self._good_fix_at is None or now - self._good_fix_at < self.cfg.no_data_timeout_s:
            return
        if self.health.snapshot().get("gnss") == "ok":
            log.warning("GNSS: the receiver talks but has had no fix for %.0f s", now - self._good_fix_at)
            self.health.update(gnss="no_fix")

    def _emit(self, fixes: list[Fix]) -> None:
        for fix in fixes:
            was_frozen = self._frozen
            self._recent.append(fix)
            frozen = frozen_output(self._recent)
            self._frozen = frozen is not None
            if frozen is not None:
                self._count("gnss_frozen_epochs")
                if not was_frozen:
                    log.warning("GNSS: %s: its output is frozen; not used", frozen)
                    if self.health is not None:
                        self.health.update(gnss="frozen", gnss_problem=f"{frozen}: power-cycle it")
                continue
            if was_frozen and self.health is not None:  # moving again: _report sets the state
                self.health.update(gnss_problem=None)
            try:
                pose = self.filter.update(fix)
            except Exception:  # a filter bug must not take the receiver down with it
                log.exception("position filter failed on %s", fix)
                self._count("gnss_filter_errors")
                pose = None
            self.last_fix = fix
            self._report(fix, pose)
            if self.on_fix is not None:
                try:
                    self.on_fix(fix, pose)
                except Exception:
                    log.exception("GNSS on_fix callback failed")

    def _report(self, fix: Fix, pose: Pose | None) -> None:
        """The GNSS state on the health board. The `fix` field there is the pipeline's (the filtered pose at
        each frame), so the reader leaves it alone."""
        if self.health is None:
            return
        if fix.mode > 0 and not fix.estimated:
            state = "ok"
            self._good_fix_at = time.monotonic()
            self.health.update(last_fix_mono=self._good_fix_at, gnss_fix=fix_kind(fix))
            if fix.utc is not None and not self.decoder.assembler.virtual_clock:
                # While the agent holds the receiver doctor cannot compare the clock with it: the agent does.
                taken = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.monotonic() - fix.t_mono)
                self.health.update(clock_offset_s=round((taken - fix.utc).total_seconds(), 2))
        elif fix.mode > 0 and pose is not None and pose.state == "stale":  # an estimated fix, too old to use
            state = "stale"
        else:
            state = "no_fix"
        self.health.update(gnss=state)
        self.health.count("gnss_epochs")
        if fix.mode > 0:
            self.health.count("gnss_fixes")

    def _set_health_opened(self) -> None:
        """The port (or gpsd) is open again: "starting" only until the first loss. A receiver that went silent
        is reopened every few seconds; "starting" then hid, for minutes, that it was dead."""
        if self.health is not None and self.health.snapshot().get("gnss") != "lost":
            self.health.update(gnss="starting")

    def _heard(self) -> None:
        """Valid sentences again: the receiver is not lost, though it may have no fix (only satellites in view,
        GSV/GSA: 'lost' stayed until a fix and doctor called a receiver without sky view dead)."""
        if self.health is not None:
            lost = self.health.snapshot().get("gnss") == "lost"
            self.health.update(gnss_problem=None, **({"gnss": "no_fix"} if lost else {}))

    def _set_health(self, state: str) -> None:
        if self.health is not None:
            self.health.update(gnss=state)

    def _count(self, name: str) -> None:
        if self.health is not None:
            self.health.count(name)
