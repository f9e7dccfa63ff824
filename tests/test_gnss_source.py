"""Sources of fixes: recordings, a serial port through a pseudo-terminal (unplug and replug), stdin, gpsd's JSON
stream over a real socket, and the `edge-agent gps replay` command."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.config.gnss import GnssConfig
from edge_agent.gnss.epochs import Fix, virtual_mono
from edge_agent.gnss.kalman import PositionFilter
from edge_agent.gnss.nmea import checksum
from edge_agent.gnss.source import GnssReader, fix_from_tpv, fixes_from_file
from edge_agent.health import HealthBoard


def sentence(body: str) -> str:
    return f"${body}*{checksum(body.encode()):02X}\r\n"


def epoch_text(t: dt.datetime, east_m: float = 0.0) -> str:
    lon = 11.5 + east_m / 74000.0
    hhmmss = t.strftime("%H%M%S") + f".{t.microsecond // 10000:02d}"
    lon_text = f"{int(lon):03d}{(lon - int(lon)) * 60:08.5f}"
    return (sentence(f"GPRMC,{hhmmss},A,4807.03800,N,{lon_text},E,19.4,90.0,{t.strftime('%d%m%y')},,,A")
            + sentence(f"GPGGA,{hhmmss},4807.03800,N,{lon_text},E,1,09,0.9,545.4,M,46.9,M,,")
            + sentence("GPGSA,A,3,04,05,09,12,24,,,,,,,,1.8,0.9,1.5"))


T_START = dt.datetime(2026, 11, 20, 8, 0, 0, tzinfo=dt.UTC)  # after the live floor (LIVE_DATE_FLOOR)


def recording(path: Path, epochs: int, step_s: float = 1.0) -> Path:
    path.write_text("".join(epoch_text(T_START + dt.timedelta(seconds=k * step_s), 10.0 * k * step_s)
                            for k in range(epochs)))
    return path


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


# --- recordings


def test_fixes_from_file_on_the_virtual_utc_clock(tmp_path):
    fixes = list(fixes_from_file(recording(tmp_path / "drive.nmea", 5)))
    assert len(fixes) == 5
    assert [f.t_mono for f in fixes] == [virtual_mono(T_START) + k for k in range(5)]
    assert all(f.mode == 3 for f in fixes)


def test_unreadable_recording_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        list(fixes_from_file(tmp_path / "missing.nmea"))


def test_file_source_in_real_time_paces_and_stamps_monotonic(tmp_path):
    cfg = GnssConfig(source="file", file=str(recording(tmp_path / "d.nmea", 4, step_s=0.2)), realtime=True)
    got = []
    reader = GnssReader(cfg, PositionFilter(cfg), on_fix=lambda fix, pose: got.append((time.monotonic(), fix)))
    t0 = time.monotonic()
    reader.start()
    assert wait_for(lambda: not reader.alive)
    assert len(got) == 4
    assert time.monotonic() - t0 >= 0.55
    stamps = [fix.t_mono for _, fix in got]
    assert all(b - a > 0.05 for a, b in itertools.pairwise(stamps))  # paced, not all at once
    assert 0.55 <= stamps[-1] - stamps[0] < 3.0  # 3 x 0.2 s, with room for a loaded machine


def test_stdin_source(tmp_path, monkeypatch):
    data = recording(tmp_path / "d.nmea", 3).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    cfg = GnssConfig(source="stdin")
    pf = PositionFilter(cfg)
    health = HealthBoard()
    reader = GnssReader(cfg, pf, health)
    reader.start()
    assert wait_for(lambda: not reader.alive)
    assert reader.decoder.summary()["fixes"] == 3
    assert health.snapshot()["gnss"] == "ok"
    assert pf.position_at(time.monotonic()) is not None


def test_stdin_pipe_survives_silence_and_ends_at_eof(monkeypatch):
    read_fd, write_fd = os.pipe()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(open(read_fd, "rb")))  # noqa: SIM115 - closed at EOF
    cfg = GnssConfig(source="stdin", no_data_timeout_s=0.2, epoch_idle_s=0.05)
    fixes = []
    reader = GnssReader(cfg, PositionFilter(cfg), on_fix=lambda fix, pose: fixes.append(fix))
    reader.start()
    try:
        os.write(write_fd, epoch_text(T_START).encode())
        # An idle pipe closes the epoch (no need to wait for the next one) and does not end the reader.
        assert wait_for(lambda: len(fixes) == 1, timeout=3)
        time.sleep(0.5)
        assert reader.alive
        os.write(write_fd, epoch_text(T_START + dt.timedelta(seconds=1)).encode())
        assert wait_for(lambda: len(fixes) == 2, timeout=3)
    finally:
        os.close(write_fd)
    assert wait_for(lambda: not reader.alive, timeout=3)


# --- serial through a pseudo-terminal pair


class FakeReceiver:
    """The master side of a pty, reachable through a stable symlink like /dev/serial/by-id/..."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.sent = 0
        self.sent_at: list[float] = []  # monotonic time just before each epoch was written

    def plug(self) -> None:
        master, slave = os.openpty()
        name = os.ttyname(slave)
        os.close(slave)  # the reader opens the slave by name; the master keeps it alive
        tmp = self.link.with_suffix(".new")
        os.symlink(name, tmp)
        os.replace(tmp, self.link)
        self.master = master

    def unplug(self) -> None:
        os.close(self.master)
        self.master = None

    def send_epoch(self) -> float:
        t = T_START + dt.timedelta(seconds=self.sent * 0.1)
        before = time.monotonic()
        os.write(self.master, epoch_text(t, 1.4 * self.sent).encode())
        self.sent += 1
        self.sent_at.append(before)
        return before


@pytest.fixture
def receiver(tmp_path):
    rx = FakeReceiver(tmp_path / "gps0")
    rx.plug()
    yield rx
    if rx.master is not None:
        rx.unplug()


def serial_cfg(port: Path, **extra) -> GnssConfig:
    settings = {"source": "serial", "port": str(port), "baud": 115200, "reconnect_min_s": 0.05,
                "reconnect_max_s": 0.2, "epoch_idle_s": 0.05, "no_data_timeout_s": 2.0, "receiver_latency_s": 0.1}
    return GnssConfig(**{**settings, **extra})


@contextlib.contextmanager
def live_reader(receiver: FakeReceiver) -> Iterator[tuple[HealthBoard, list[Fix]]]:
    """A GnssReader on RECEIVER's port with a health board; yields the board and the fixes it passed on."""
    cfg = serial_cfg(receiver.link)
    health = HealthBoard()
    fixes: list[Fix] = []
    reader = GnssReader(cfg, PositionFilter(cfg), health, on_fix=lambda fix, pose: fixes.append(fix))
    reader.start()
    try:
        yield health, fixes
    finally:
        reader.stop()


def feed_until(receiver: FakeReceiver, condition, pace_s: float = 0.1, timeout: float = 10.0) -> bool:
    """Send epochs at the pace of a receiver until CONDITION holds: whatever went out before the reader had
    the port open is lost, as with a real receiver, and the next epochs arrive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receiver.send_epoch()
        if wait_for(condition, pace_s):
            return True
    return False


def test_serial_unplug_and_replug(receiver):
    cfg = serial_cfg(receiver.link)
    health = HealthBoard()
    fixes = []
    states = []
    reader = GnssReader(cfg, PositionFilter(cfg), health, on_fix=lambda fix, pose: fixes.append(fix))
    reader.start()
    try:
        assert feed_until(receiver, lambda: len(fixes) >= 5), fixes
        assert health.snapshot()["gnss"] == "ok"

        receiver.unplug()
        assert wait_for(lambda: health.snapshot()["gnss"] == "lost")
        states.append(health.snapshot()["gnss"])
        assert wait_for(lambda: reader.reconnects >= 2)  # a few failed reopen attempts against a vanished device

        receiver.plug()
        assert feed_until(receiver, lambda: len(fixes) >= 9), len(fixes)
        assert fixes[-1].utc > fixes[4].utc
        assert health.snapshot()["counters"]["gnss_reconnects"] >= 1
    finally:
        reader.stop()
    assert not reader.alive


def test_serial_fixes_are_stamped_on_arrival_minus_latency(receiver):
    cfg = serial_cfg(receiver.link, receiver_latency_s=1.0)
    fixes = []
    reader = GnssReader(cfg, PositionFilter(cfg), on_fix=lambda fix, pose: fixes.append(fix))
    reader.start()
    try:
        assert feed_until(receiver, lambda: len(fixes) >= 2, pace_s=0.2)
    finally:
        reader.stop()
    for fix in fixes:
        sent = receiver.sent_at[round((fix.utc - T_START).total_seconds() / 0.1)]
        # Never before it was sent minus the latency; the slack is the reader thread's scheduling.
        assert sent - 1.0 <= fix.t_mono <= sent - 1.0 + 0.5


def test_a_live_receiver_tells_how_far_the_system_clock_is_from_it(receiver):
    # While the agent holds the receiver doctor cannot compare the clock with it (a box 2 days ahead read "NTP
    # state unknown", as a sound one): the reader compares at each fix and the status file carries it.
    with live_reader(receiver) as (health, fixes):
        assert feed_until(receiver, lambda: len(fixes) >= 2)
    behind = (dt.datetime.now(dt.UTC) - fixes[-1].utc).total_seconds()  # the fake receiver's time is T_START on
    assert health.snapshot()["clock_offset_s"] == pytest.approx(behind, abs=2.0)
    assert behind > 86400


def test_the_reader_holds_the_port_exclusively(receiver):
    import serial

    cfg = serial_cfg(receiver.link)
    health = HealthBoard()
    reader = GnssReader(cfg, PositionFilter(cfg), health)
    def locked() -> bool:
        try:
            serial.Serial(str(receiver.link), 115200, exclusive=True).close()
        except serial.SerialException:
            return True
        return False

    assert not locked()
    reader.start()
    try:
        assert wait_for(locked)
    finally:
        reader.stop()
    assert wait_for(lambda: not locked())


def test_silent_port_is_reopened(receiver):
    cfg = serial_cfg(receiver.link, no_data_timeout_s=0.3)
    health = HealthBoard()
    reader = GnssReader(cfg, PositionFilter(cfg), health)
    reader.start()
    try:
        assert wait_for(lambda: reader.reconnects >= 2, timeout=5)
    finally:
        reader.stop()


def test_a_receiver_that_went_silent_stays_lost_while_its_port_is_reopened(receiver):
    # A van's receiver dies mid-drive; the port (a USB adapter, a pty here) stays: the reader reopens it every few
    # seconds, and each reopen once set "starting", so `edge-agent status` showed a dead receiver as starting.
    cfg = serial_cfg(receiver.link, no_data_timeout_s=0.3)
    health = HealthBoard()
    fixes = []
    reader = GnssReader(cfg, PositionFilter(cfg), health, on_fix=lambda fix, pose: fixes.append(fix))
    reader.start()
    try:
        assert feed_until(receiver, lambda: len(fixes) >= 3)
        assert wait_for(lambda: health.snapshot()["gnss"] == "lost", timeout=5)
        seen = set()
        deadline = time.monotonic() + 5
        while reader.reconnects < 3 and time.monotonic() < deadline:
            seen.add(health.snapshot()["gnss"])
            time.sleep(0.005)
        assert reader.reconnects >= 3 and seen == {"lost"}, (reader.reconnects, seen)
        assert feed_until(receiver, lambda: health.snapshot()["gnss"] == "ok")  # it talks again: ok at once
    finally:
        reader.stop()


def test_a_port_that_sends_only_junk_is_lost_and_says_why(receiver, caplog):
    # A wrong baud rate reads as a steady stream of junk bytes: the health must not stay "starting" for ever.
    cfg = serial_cfg(receiver.link, no_data_timeout_s=0.6)
    health = HealthBoard()
    reader = GnssReader(cfg, PositionFilter(cfg), health)
    with caplog.at_level(logging.WARNING, logger="edge_agent.gnss.source"):
        reader.start()
        try:
            deadline = time.monotonic() + 5
            while health.snapshot().get("gnss") != "lost" and time.monotonic() < deadline:
                os.write(receiver.master, bytes(range(128, 256)) + b"$GPGGA,junk*00\r\n")
                time.sleep(0.05)
            assert health.snapshot()["gnss"] == "lost"
            # ...and why, on the health board doctor and status read (they said "silent: unpowered, wrong port").
            assert "wrong baud rate" in (health.snapshot()["gnss_problem"] or "")
            # Then only satellites in view (GSV, no fix: no sky view yet): the receiver talks, it is not lost.
            gsv = sentence("GPGSV,1,1,02,04,12,077,,05,34,155,").encode()
            deadline = time.monotonic() + 5
            while health.snapshot()["gnss"] == "lost" and time.monotonic() < deadline:
                os.write(receiver.master, gsv)
                time.sleep(0.05)
            assert health.snapshot()["gnss"] == "no_fix" and health.snapshot()["gnss_problem"] is None
        finally:
            reader.stop()
    assert any("not one valid NMEA sentence" in r.getMessage() and "wrong baud rate" in r.getMessage()
               for r in caplog.records)


def test_a_receiver_that_talks_without_a_fix_stays_no_fix_while_the_last_fix_ages(receiver):
    # It flapped no_fix -> stale -> no_fix as the filter's last fix aged (doctor then said "stale", amber).
    cfg = serial_cfg(receiver.link, stale_after_s=0.5)
    health = HealthBoard()
    fixes = []
    reader = GnssReader(cfg, PositionFilter(cfg), health, on_fix=lambda fix, pose: fixes.append(fix))
    reader.start()
    seen = set()
    try:
        assert feed_until(receiver, lambda: len(fixes) >= 3)
        deadline = time.monotonic() + 2.0  # four times stale_after_s
        while time.monotonic() < deadline:
            for body in ("GPGGA,120000.00,,,,,0,00,,,,,,,", "GPRMC,120000.00,V,,,,,,,201126,,,N"):
                os.write(receiver.master, sentence(body).encode())
            time.sleep(0.1)
            if health.snapshot()["gnss"] != "ok":
                seen.add(health.snapshot()["gnss"])
    finally:
        reader.stop()
    assert seen == {"no_fix"}, seen


def test_missing_port_keeps_retrying_without_crashing(tmp_path):
    cfg = serial_cfg(tmp_path / "no-such-tty")
    health = HealthBoard()
    reader = GnssReader(cfg, PositionFilter(cfg), health)
    reader.start()
    try:
        assert wait_for(lambda: reader.reconnects >= 2)
        assert reader.alive and health.snapshot()["gnss"] == "lost"
    finally:
        reader.stop()


def test_reopen_backoff_doubles_up_to_the_limit(tmp_path, caplog):
    cfg = serial_cfg(tmp_path / "no-such-tty", reconnect_min_s=0.1, reconnect_max_s=0.4)
    caplog.set_level(logging.DEBUG, logger="edge_agent.gnss.source")
    reader = GnssReader(cfg, PositionFilter(cfg))
    reader.start()
    try:
        assert wait_for(lambda: reader.reconnects >= 5)
    finally:
        reader.stop()
    delays = [float(r.getMessage().split("retrying in ")[1].split(" s")[0])
              for r in caplog.records if "retrying in" in r.getMessage()]
    assert delays[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # said once, not on every attempt


# --- gpsd JSON


def test_fix_from_tpv():
    fix = fix_from_tpv({"class": "TPV", "mode": 3, "time": "2026-11-20T08:00:01.000Z", "lat": 48.1, "lon": 11.5,
                        "altMSL": 520.0, "speed": 12.5, "track": 91.0, "epx": 3.0, "epy": 4.0}, 5.0)
    assert fix.mode == 3 and fix.lat == 48.1 and fix.eph_m == pytest.approx(5.0)
    assert fix.utc == T_START + dt.timedelta(seconds=1)
    assert fix_from_tpv({"class": "SKY"}, 0.0) is None
    no_fix = fix_from_tpv({"class": "TPV", "mode": 1, "lat": 48.1, "lon": 11.5}, 0.0)
    assert no_fix.mode == 0 and no_fix.lat is None
    unknown = fix_from_tpv({"class": "TPV", "mode": 3, "lat": 48.1, "lon": 11.5, "eph": 0.0}, 0.0)
    assert unknown.eph_m is None  # 0 m is "no error model", not an exact fix
    bad = fix_from_tpv({"class": "TPV", "mode": 3, "lat": 95.0, "lon": "x", "time": "yesterday"}, 0.0)
    assert bad.mode == 0 and bad.utc is None


@pytest.mark.parametrize(("status", "estimated", "rtk"), [
    (1, False, None), (2, False, None), (3, False, "rtk_fixed"), (4, False, "rtk_float"),
    (5, True, None), (6, False, None), (8, True, None),
])
def test_gpsd_status_says_rtk_dead_reckoning_and_simulation(status, estimated, rtk):
    """gpsd's status 6 is GNSS fused with dead reckoning (measured) and was dropped as estimated, while 5
    (dead reckoning only) and 8 (simulated) were used as measurements; RTK (3, 4) was a plain fix."""
    fix = fix_from_tpv({"class": "TPV", "mode": 3, "status": status, "lat": 48.1, "lon": 11.5, "eph": 0.02}, 0.0)
    assert (fix.estimated, fix.rtk) == (estimated, rtk)


@pytest.mark.parametrize("status", [[3], {"rtk": 3}, "3", True, None])
def test_gpsd_status_that_is_not_a_number_is_ignored(status):
    """A list or object as the status is unhashable: its lookups raised TypeError, which ended the gpsd session
    (and its connection) over one bad line. Junk is no status: the fix stays, measured and not RTK."""
    fix = fix_from_tpv({"class": "TPV", "mode": 3, "status": status, "lat": 48.1, "lon": 11.5, "eph": 2.0}, 0.0)
    assert (fix.mode, fix.estimated, fix.rtk) == (3, False, None)


def tpv(k: int) -> bytes:
    t = (T_START + dt.timedelta(seconds=k)).isoformat().replace("+00:00", "Z")
    return (json.dumps({"class": "TPV", "mode": 3, "time": t, "lat": 48.1, "lon": 11.5 + k * 1e-4, "speed": 7.4,
                        "track": 90.0, "eph": 5.0}) + "\n").encode()


def test_gpsd_json_stream_and_reconnect():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    watches = []

    def serve():
        for session in range(2):
            conn, _ = server.accept()
            with conn:
                watches.append(conn.recv(1024))
                # nested 5,000 deep: json.loads raised RecursionError, which ended the session's reading
                conn.sendall(b'{"class":"VERSION","release":"3.25"}\nnot json\n' + b"[" * 5000 + b"\n")
                for k in range(3):
                    conn.sendall(tpv(session * 10 + k))
                    time.sleep(0.02)
            # closing the connection = gpsd restarted

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cfg = GnssConfig(source="gpsd", gpsd_port=port, reconnect_min_s=0.05)
    fixes = []
    health = HealthBoard()
    reader = GnssReader(cfg, PositionFilter(cfg), health, on_fix=lambda fix, pose: fixes.append(fix))
    reader.start()
    try:
        assert wait_for(lambda: len(fixes) >= 6)
    finally:
        reader.stop()
        server.close()
    assert b"WATCH" in watches[0] and b'"json":true' in watches[0]
    assert reader.reconnects >= 1
    assert fixes[-1].utc == T_START + dt.timedelta(seconds=12)
    assert health.snapshot()["counters"]["gpsd_bad_json"] >= 2


# --- CLI


def run_cli(*args: str, stdin: bytes | None = None):
    return CliRunner().invoke(app, ["gps", *args], input=stdin)


def test_gps_replay_json_format(tmp_path):
    res = run_cli("replay", "--json", str(recording(tmp_path / "d.nmea", 3)))
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(records) == 3
    assert set(records[0]) == {"time", "mode", "rtk", "lat", "lon", "speed_mps", "track_deg", "eph_m", "sats",
                               "filtered"}
    assert set(records[0]["filtered"]) == {"lat", "lon", "speed_mps", "heading_deg", "h_std_m", "state"}
    assert records[0]["time"] == "2026-11-20T08:00:00.000Z"
    assert records[2]["filtered"]["state"] == "ok" and records[2]["mode"] == 3
    assert "sentences=9" in res.stderr and "epochs=3" in res.stderr and "fixes=3" in res.stderr


def test_gps_replay_from_stdin_with_garbage_exits_zero(tmp_path):
    data = os.urandom(3000) + recording(tmp_path / "d.nmea", 2).read_bytes() + b"$GPGGA,12*00\r\n\x00\xff"
    res = run_cli("replay", "--json", "-", stdin=data)
    assert res.exit_code == 0, res.output
    assert len(res.stdout.splitlines()) == 2
    assert "bad_checksums=" in res.stderr


def test_gps_replay_unreadable_path_exits_nonzero_with_one_line(tmp_path):
    res = run_cli("replay", str(tmp_path / "missing.nmea"))
    assert res.exit_code == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "missing.nmea" in res.stderr


def test_gps_replay_text_output(tmp_path):
    res = run_cli("replay", str(recording(tmp_path / "d.nmea", 2)))
    assert res.exit_code == 0
    assert "2026-11-20 08:00:01.000" in res.stdout and "ok" in res.stdout


def test_gps_replay_realtime_paces(tmp_path):
    t0 = time.monotonic()
    res = run_cli("replay", "--realtime", "--json", str(recording(tmp_path / "d.nmea", 3, step_s=0.25)))
    assert res.exit_code == 0
    assert time.monotonic() - t0 >= 0.45
    assert not math.isnan(json.loads(res.stdout.splitlines()[-1])["lat"])


def test_gps_monitor_shows_live_fixes(receiver):
    def feed():
        time.sleep(0.5)
        for _ in range(20):
            receiver.send_epoch()
            time.sleep(0.1)

    feeder = threading.Thread(target=feed)
    feeder.start()
    res = run_cli("monitor", "--port", str(receiver.link), "--baud", "115200", "--seconds", "3.5")
    feeder.join()
    assert res.exit_code == 0, res.output
    assert "48.1173000" in res.stdout  # 4807.038 N
    assert "3D" in res.stdout and "ok" in res.stdout


def test_gps_monitor_rejects_a_bad_gpsd_address():
    res = run_cli("monitor", "--gpsd", "nohostport", "--seconds", "1")
    assert res.exit_code == 1 and "HOST:PORT" in res.stderr


# --- config


def test_every_gnss_setting_is_described_and_in_the_example():
    import tomllib

    from edge_agent.config import EXAMPLE

    for name, field in GnssConfig.model_fields.items():
        assert field.description, name
    example = tomllib.loads(EXAMPLE.read_text())["gnss"]
    assert set(example) == set(GnssConfig.model_fields)
    assert GnssConfig(**example) == GnssConfig()


def test_gnss_config_rejects_unknown_keys_and_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        GnssConfig(sorce="serial")
    with pytest.raises(ValidationError):
        GnssConfig(source="bluetooth")
    with pytest.raises(ValidationError):
        GnssConfig(baud=0)


def test_gps_replay_takes_filter_settings_from_an_agent_config(tmp_path):
    conf = tmp_path / "agent.toml"
    conf.write_text('[gnss]\ndate_floor = 2030-01-01\n')
    res = run_cli("replay", "--json", "--config", str(conf), str(recording(tmp_path / "d.nmea", 1)))
    assert res.exit_code == 0, res.output
    rolled = T_START + dt.timedelta(weeks=1024)  # 2026 is before the floor: a week rollover
    assert json.loads(res.stdout)["time"] == rolled.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    conf.write_text('[gnss]\nbogus = 1\n')
    res = run_cli("replay", "--config", str(conf), str(tmp_path / "d.nmea"))
    assert res.exit_code == 1 and "gnss.bogus" in res.stderr


def test_a_receiver_that_loses_its_fix_without_a_time_goes_no_fix(receiver):
    """Receivers losing the fix send empty sentences without a time (`$GPRMC,,V,...`: the Regensburg Garmin, a
    u-blox cold start), which make no epoch: the state stayed "ok" for as long as they talked."""
    cfg = serial_cfg(receiver.link, no_data_timeout_s=0.6)
    health = HealthBoard()
    reader = GnssReader(cfg, PositionFilter(cfg), health)
    reader.start()
    try:
        assert feed_until(receiver, lambda: health.snapshot()["gnss"] == "ok")
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and health.snapshot()["gnss"] == "ok":
            for body in ("GPRMC,,V,,,,,,,110410,,,N", "GPGGA,,,,,,0,00,99.99,,,,,,"):
                os.write(receiver.master, sentence(body).encode())
            time.sleep(0.1)
        assert health.snapshot()["gnss"] == "no_fix"
        assert feed_until(receiver, lambda: health.snapshot()["gnss"] == "ok")  # and back with the fix
    finally:
        reader.stop()


def test_a_receiver_repeating_one_fix_is_frozen_and_not_used(receiver):
    """A receiver repeating its last fix (hung firmware) read "ok"; the filter reset on it every few seconds and
    doctor blamed the box's clock."""
    with live_reader(receiver) as (health, fixes):
        assert feed_until(receiver, lambda: len(fixes) >= 2)
        assert health.snapshot()["gnss_fix"] == "3D fix"  # what doctor names beside "ok" while the agent runs
        stuck = epoch_text(T_START + dt.timedelta(seconds=receiver.sent * 0.1), 1.4 * receiver.sent).encode()
        used = len(fixes)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and health.snapshot()["gnss"] != "frozen":
            os.write(receiver.master, stuck)
            time.sleep(0.12)
        assert health.snapshot()["gnss"] == "frozen"
        assert "repeats one fix" in health.snapshot()["gnss_problem"]
        assert len(fixes) - used <= 2  # the repeats after the second go nowhere
        assert feed_until(receiver, lambda: health.snapshot()["gnss"] == "ok")
        assert health.snapshot()["gnss_problem"] is None


def test_a_receiver_stuck_on_one_position_with_a_fresh_time_is_frozen(receiver):
    """A receiver repeating one position with a ticking time and its speed (10 m/s) read "ok": every detection
    of those seconds was placed where it stuck. At walking pace a coarse receiver repeats positions honestly."""
    with live_reader(receiver) as (health, fixes):
        assert feed_until(receiver, lambda: len(fixes) >= 2)
        where = 1.4 * receiver.sent
        deadline = time.monotonic() + 6.0
        k = 0
        while time.monotonic() < deadline and health.snapshot()["gnss"] != "frozen":
            k += 1
            os.write(receiver.master, epoch_text(T_START + dt.timedelta(seconds=receiver.sent * 0.1 + k), where)
                     .encode())
            time.sleep(0.12)
        assert health.snapshot()["gnss"] == "frozen"
        assert "repeats one position" in health.snapshot()["gnss_problem"]
        assert 0.8 < k * 0.12 * 10.0 / 20.0 < 2  # judged after about 20 m of stated motion, not at once
        assert feed_until(receiver, lambda: health.snapshot()["gnss"] == "ok")


def test_frozen_output_leaves_a_slow_coarse_receiver_alone():
    from edge_agent.gnss.source import frozen_output

    def at(k: int, speed: float) -> Fix:
        return Fix(utc=T_START + dt.timedelta(seconds=k), t_mono=float(k), mode=3, lat=48.1, lon=11.5, alt_m=None,
                   speed_mps=speed, track_deg=90.0, eph_m=3.0, hdop=1.0, sats=9)

    assert frozen_output([at(k, 1.5) for k in range(10)]) is None  # 13.5 m at walking pace: 1.8 m digits
    assert frozen_output([at(k, 0.0) for k in range(60)]) is None  # parked
    noise = np.random.default_rng(1)  # parked, the receiver's speed noise (the iTrek capture: 0.33 kn on average)
    assert frozen_output([at(k, abs(noise.normal(0, 0.35))) for k in range(100)]) is None  # summed to 21 m
    assert "moved 30 m" in frozen_output([at(k, 10.0) for k in range(4)])
