"""`edge-agent doctor` answering "why is this box quiet?": recordings without NMEA, a dead agent, a server that
never confirms, old rows, queues it cannot use and queues the agent moved aside. Real inputs throughout: NMEA
bytes from pynmea2, outboxes made by the Outbox class, status files written by the agent's own uplink."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config.outbox import OutboxConfig
from edge_agent.doctor import Level, run_checks
from edge_agent.link.outbox import Outbox
from edge_agent.link.outbox_file import move_aside
from edge_agent.link.outbox_schema import SCHEMA_VERSION
from tests.test_doctor import EDGE_AGENT, FAST, by_name, nmea_epoch, write_config
from tests.test_outbox import make_coverage, make_event


def wait_for(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.05)


def fill(path: Path, events: int, coverage: int = 0) -> list[str]:
    """EVENTS events and COVERAGE coverage records in the outbox at PATH, as the pipeline stores them (not as
    the agent opens it: that would take back the queues a test moved aside)."""
    with Outbox(path, OutboxConfig(synchronous="NORMAL"), agent=False) as ob:
        ids = []
        for _ in range(events):
            event = make_event(ob)
            assert ob.add_event(event)
            ids.append(event["event_id"])
        for _ in range(coverage):
            assert ob.add_coverage(make_coverage())
    return ids


def uplink_config(tmp_path: Path, port: int, **uplink: Any) -> Path:
    """An agent config whose uplink is on, towards 127.0.0.1:PORT, with a password file and quick timings."""
    (tmp_path / "pw").write_text("pw-quiet\n")
    return write_config(tmp_path, device={"id": "veh-quiet"}, uplink={
        "enabled": True, "host": "127.0.0.1", "port": port, "tls": False, "password_file": str(tmp_path / "pw"),
        "heartbeat_s": HEARTBEAT_S, "backoff_initial_s": 0.1, "backoff_max_s": 0.5, **uplink})


# Short, so a status goes stale within seconds; not shorter, so a loaded test machine keeps a live one fresh.
HEARTBEAT_S = 1.0
PAST_STALE_S = 3 * HEARTBEAT_S + 0.3


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nobody listens there


# -------------------------------------------------------------------------------------------- 1. GNSS file
def broken_checksums(n: int) -> bytes:
    start = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    lines = b"".join(nmea_epoch(start + timedelta(seconds=i)) for i in range(n)).decode().split("\r\n")[:-1]
    return b"".join(f"{line[:-2]}{(int(line[-2:], 16) ^ 0x5A):02X}\r\n".encode() for line in lines)


@pytest.mark.parametrize(("content", "verdict"), [
    (broken_checksums(20), "40 NMEA sentences, every checksum wrong"),
    (bytes(np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8)), "3000 bytes but no valid NMEA"),
    (b"", "empty recording"),
], ids=["broken-checksums", "random-bytes", "empty"])
def test_a_recording_without_valid_nmea_gets_the_serial_verdicts(tmp_path: Path, content: bytes,
                                                                  verdict: str) -> None:
    rec = tmp_path / "drive.nmea"
    rec.write_bytes(content)
    path = write_config(tmp_path, gnss={"source": "file", "file": str(rec)})
    gnss = by_name(run_checks(str(path), only=["gnss"], options=FAST))["gnss"]
    assert gnss.level is Level.RED and verdict in gnss.summary, gnss
    assert "not one byte" not in gnss.summary and "dialout" not in gnss.hint and "gnss.baud" not in gnss.hint
    assert gnss.data["bytes"] == len(content)


def test_a_receiver_losing_every_third_sentence_to_bad_checksums_is_amber(tmp_path: Path) -> None:
    # A flaky cable: doctor stopped after two good fixes and said OK with "1 bad checksums".
    start = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    lines = b"".join(nmea_epoch(start + timedelta(seconds=i)) for i in range(20)).decode().split("\r\n")[:-1]
    flaky = b"".join((f"{line[:-2]}{(int(line[-2:], 16) ^ 0x5A):02X}" if i % 3 == 0 else line).encode() + b"\r\n"
                     for i, line in enumerate(lines))
    rec = tmp_path / "drive.nmea"
    rec.write_bytes(flaky)
    gnss = by_name(run_checks(str(write_config(tmp_path, gnss={"source": "file", "file": str(rec)})),
                              only=["gnss"], options=FAST))["gnss"]
    assert gnss.level is Level.YELLOW and "14 bad checksums (35% of the sentences)" in gnss.summary, gnss
    rec.write_bytes(b"".join(nmea_epoch(start + timedelta(seconds=i)) for i in range(20)))
    assert by_name(run_checks(str(write_config(tmp_path, gnss={"source": "file", "file": str(rec)})),
                              only=["gnss"], options=FAST))["gnss"].level is Level.GREEN


# ------------------------------------------------------------------------------ 3, 4. queues it cannot use
def test_a_queue_from_a_newer_agent_fails_in_the_words_run_uses(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    queue = tmp_path / "state" / "outbox.db"
    fill(queue, 2)
    with closing(sqlite3.connect(queue)) as conn:  # `with connect()` alone left it open, locking out the refusal 10 s
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    with pytest.raises(RuntimeError) as refused:  # what `run` and `replay` print when they open it
        Outbox(queue, OutboxConfig())
    ob = by_name(run_checks(str(path), only=["outbox"], options=FAST))["outbox"]
    assert ob.level is Level.RED and str(refused.value) in ob.summary, ob
    assert f"outbox schema version 99 is newer than this agent knows ({SCHEMA_VERSION})" in ob.summary
    with closing(sqlite3.connect(queue)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99  # doctor changed nothing


def test_an_outbox_file_that_is_a_folder(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "state" / "outbox.db").mkdir()
    ob = by_name(run_checks(str(path), only=["outbox"], options=FAST))["outbox"]
    assert ob.level is Level.RED and "is a folder, not a file" in ob.summary, ob
    assert "damaged" not in ob.summary and "I/O" not in ob.summary and "outbox.file" in ob.hint


# ------------------------------------------------------------------------------------ 5. queues moved aside
def test_queues_the_agent_moved_aside_are_warned_about(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    queue = tmp_path / "state" / "outbox.db"
    queue.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)  # damaged beyond reading
    Outbox(queue, OutboxConfig()).close()                      # the agent's start moves it aside
    [garbage] = queue.parent.glob("outbox.db.corrupt-*")
    time.sleep(1.1)  # move_aside stamps to the second: the next one gets a name of its own
    fill(queue, 2, coverage=1)
    kept = move_aside(queue, "quick_check failed")             # a sound file an older agent moved aside
    fill(queue, 1)
    ob = by_name(run_checks(str(path), only=["outbox"], options=FAST))["outbox"]
    assert ob.level is Level.YELLOW, ob  # the agent runs on a new queue: a warning, not a failure
    assert f"{garbage.name} (3.9 KB, unreadable)" in ob.summary
    assert f"{kept.name} (" in ob.summary and "3 unconfirmed rows)" in ob.summary
    assert "1 unconfirmed rows" in ob.summary  # the live queue is still reported as before
    assert {Path(m["path"]).name: m["unconfirmed"] for m in ob.data["moved_aside"]} == {garbage.name: None,
                                                                                        kept.name: 3}
    assert "never sent" in ob.explanation and "off the box" in ob.hint


# ------------------------------------------------------------------------------------- 2b. is the agent up
AGENT = """
import sys, time
from edge_agent import config
from edge_agent.health import HealthBoard
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from edge_agent.link.writer_lock import WriterLock

cfg = config.load(sys.argv[1])
WriterLock(cfg.outbox_path).acquire()  # as `edge-agent run` holds its outbox while it runs
Uplink(cfg.uplink, cfg.device.id, Outbox(cfg.outbox_path, cfg.outbox), HealthBoard()).start()
time.sleep(120)
"""


def test_a_killed_agent_is_red_where_edge_agent_status_says_stale(tmp_path: Path) -> None:
    from edge_agent.commands.status import collect

    path = uplink_config(tmp_path, closed_port())
    fill(tmp_path / "state" / "outbox.db", 7)
    status_file = tmp_path / "state" / "agent-status.json"
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(path)])  # its uplink writes the status file
    try:
        wait_for(status_file.exists, 30, "the agent's first status")
        alive = by_name(run_checks(str(path), only=["agent"], options=FAST))["agent"]
        assert alive.level is Level.GREEN and "running" in alive.summary, alive
        assert "stale" not in collect(str(path), None)["broker"]
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        # At once, long before its status goes stale: it read "running ... broker connected" in green for ~20 s.
        killed = by_name(run_checks(str(path), only=["agent"], options=FAST))["agent"]
        assert killed.level is Level.RED and "no agent holds its outbox" in killed.summary, killed
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
    time.sleep(PAST_STALE_S)
    assert "stale" in collect(str(path), None)["broker"]
    out = subprocess.run([EDGE_AGENT, "doctor", "--config", str(path), "--json", "--only", "outbox,agent,delivery"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["outbox"]["level"] == "green" and "7 unconfirmed rows" in checks["outbox"]["summary"]
    dead = checks["agent"]
    assert dead["level"] == "red" and "the agent is not running (no process holds its outbox)" in dead["summary"], dead
    assert "`systemctl status edge-agent`" in dead["hint"] and "`journalctl -u edge-agent`" in dead["hint"]


def test_after_a_power_cut_with_the_clock_behind_a_dead_agent_is_not_called_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pi has no clock chip: after a power cut it boots with the time of its last shutdown (fake-hwclock), an
    hour behind, so the dead agent's last status looked an hour in the future, never stale: `status` said
    "broker connected" and doctor "running". The status file says which boot wrote it, on that boot's clock."""
    from edge_agent.commands.status import collect
    from edge_agent.link import heartbeat

    path = uplink_config(tmp_path, closed_port())
    status_file = tmp_path / "state" / "agent-status.json"
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(path)])
    try:
        wait_for(status_file.exists, 30, "the agent's first status")
    finally:
        agent.send_signal(signal.SIGKILL)  # the power cut
        agent.wait(10)
    status = json.loads(status_file.read_text())
    status["sent_at"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="milliseconds")
    status_file.write_text(json.dumps(status))  # as the box's clock, set back an hour, now reads it
    (tmp_path / "boot_id").write_text("a-later-boot\n")
    monkeypatch.setattr(heartbeat, "BOOT_ID", tmp_path / "boot_id", raising=False)

    assert "stale" in collect(str(path), None)["broker"]
    dead = by_name(run_checks(str(path), only=["agent"], options=FAST))["agent"]
    assert dead.level is Level.RED and "not running" in dead.summary, dead
    assert "before the box last started" in dead.summary, dead


def test_no_status_file_or_a_clean_stop(tmp_path: Path) -> None:
    from edge_agent.commands.status import collect
    from edge_agent.health import HealthBoard
    from edge_agent.link.uplink import Uplink

    path = uplink_config(tmp_path, closed_port())
    missing = by_name(run_checks(str(path), only=["agent"], options=FAST))["agent"]
    assert missing.level is Level.YELLOW and "has not run with this config" in missing.summary, missing
    from edge_agent import config as agent_config

    cfg = agent_config.load(str(path))
    with Outbox(cfg.outbox_path, cfg.outbox) as ob:
        uplink = Uplink(cfg.uplink, cfg.device.id, ob, HealthBoard())
        uplink.start()
        wait_for((tmp_path / "state" / "agent-status.json").exists, 30, "the first status")
        uplink.stop()
    time.sleep(PAST_STALE_S)  # older than 3 heartbeats, yet a clean stop is no hang, for `edge-agent status` either
    assert collect(str(path), None)["broker"] == "stopped"
    stopped = by_name(run_checks(str(path), only=["agent"], options=FAST))["agent"]
    assert stopped.level is Level.YELLOW and "stopped cleanly" in stopped.summary, stopped
    assert "systemctl start edge-agent" in stopped.hint


def test_a_status_file_the_agent_did_not_write(tmp_path: Path) -> None:
    path = uplink_config(tmp_path, closed_port())
    (tmp_path / "state" / "agent-status.json").write_text('{"health": 5, "sent_at": 7}')
    agent = by_name(run_checks(str(path), only=["agent"], options=FAST))["agent"]
    assert agent.level is Level.RED and "not what the agent writes" in agent.summary, agent
    assert "health" in agent.summary and "check itself failed" not in agent.summary


def test_agent_and_delivery_are_skipped_with_the_uplink_off(tmp_path: Path) -> None:
    path = write_config(tmp_path)  # uplink.enabled = false: no status file is written, nothing is sent
    fill(tmp_path / "state" / "outbox.db", 1)
    results = by_name(run_checks(str(path), only=["agent", "delivery"], options=FAST))
    assert results["agent"].level is Level.SKIPPED and results["delivery"].level is Level.SKIPPED


# --------------------------------------------------------------------------------- 2a. is it confirmed
def send_without_ack(path: Path, times: int) -> None:
    """Hand every row out TIMES times and record the broker's PUBACK, as the uplink does when acks never come."""
    with Outbox(path, OutboxConfig(synchronous="NORMAL"), agent=False) as ob:
        for _ in range(times):
            ob.mark_sent((m.kind, m.id) for m in ob.due(100, resend_after_s=0))


def test_rows_sent_again_and_again_without_an_ack(tmp_path: Path) -> None:
    path = uplink_config(tmp_path, closed_port())
    queue = tmp_path / "state" / "outbox.db"
    fill(queue, 3, coverage=1)
    send_without_ack(queue, 2)
    twice = by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"]
    assert twice.level is Level.GREEN, twice  # one ack timeout can be a busy server
    send_without_ack(queue, 1)
    silent = by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"]
    assert silent.level is Level.RED, silent  # the server has confirmed nothing at all
    assert "4 rows sent 3+ times without the server's ack" in silent.summary
    assert "broker accepts them but the fleet server does not confirm" in silent.explanation
    assert "server/ingest" in silent.hint and silent.data["resent_unacked"] == 4
    oldest = silent.data["oldest_unacked_sent_at"]
    assert oldest and oldest in silent.summary
    time.sleep(0.01)
    with Outbox(queue, OutboxConfig(), agent=False) as ob:  # the server confirms another row later on
        event = make_event(ob)
        ob.add_event(event)
        ob.mark_confirmed([("event", event["event_id"])])
    some = by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"]
    assert some.level is Level.YELLOW and "last confirmation" in some.summary, some


@pytest.mark.parametrize(("age", "level"), [(timedelta(minutes=1), Level.GREEN),
                                            (timedelta(minutes=25), Level.YELLOW),
                                            (timedelta(hours=3), Level.RED)], ids=["fresh", "25min", "3h"])
def test_old_pending_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, age: timedelta, level: Level) -> None:
    from edge_agent.link import outbox as outbox_module

    stamp = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    monkeypatch.setattr(outbox_module, "utc_now_iso", lambda: stamp)  # rows stored AGE ago
    path = uplink_config(tmp_path, closed_port())
    fill(tmp_path / "state" / "outbox.db", 2)
    monkeypatch.undo()
    delivery = by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"]
    assert delivery.level is level, delivery
    if level is not Level.GREEN:
        assert f"2 unconfirmed rows, the oldest stored at {stamp}" in delivery.summary
        assert ("25 min ago" if level is Level.YELLOW else "3.0 h ago") in delivery.summary


def test_rows_stored_before_the_clock_was_set_are_not_56_years_old(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pi boots in 1970 until NTP or GNSS sets its clock: rows it stored then were "499037.4 h ago" in doctor,
    `status` and the heartbeat the server alerts on. Their age is unknown; they still wait, which doctor says."""
    from edge_agent.commands.status import collect
    from edge_agent.link import outbox as outbox_module
    from edge_agent.link.heartbeat import build_status

    monkeypatch.setattr(outbox_module, "utc_now_iso", lambda: "1970-01-01T01:05:36.000Z")
    path = uplink_config(tmp_path, closed_port())
    fill(tmp_path / "state" / "outbox.db", 2)
    monkeypatch.undo()
    delivery = by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"]
    assert delivery.level is Level.YELLOW, delivery
    assert "2 unconfirmed rows, the oldest stored at 1970-01-01T01:05:36.000Z (before the box's clock was set)" \
        in delivery.summary, delivery.summary
    assert " h ago" not in delivery.summary
    with Outbox(tmp_path / "state" / "outbox.db", OutboxConfig()) as ob:
        assert build_status("online", "veh-x", ob, None)["oldest_pending_age_s"] is None
    assert "h ago" not in json.dumps(collect(str(path), None), default=str)


def refuse(path: Path, ids: list[str], reason: str) -> None:
    """Mark IDS as the uplink does when the server's ack lists them under `rejected` with REASON ('{i}' is
    the row's number: the server names each event's own time)."""
    with Outbox(path, OutboxConfig(synchronous="NORMAL"), agent=False) as ob:
        assert ob.mark_rejected([(row, reason.format(i=i % 10)) for i, row in enumerate(ids)]) == len(ids)


def test_rows_the_server_refused_are_amber_with_the_reason_and_red_when_nothing_else_goes_through(
        tmp_path: Path) -> None:
    """The field case: the server refused every event as too old; the queue is empty, so every other figure
    looks fine. Nothing confirmed in the same day: every finding of the box is refused, red (it was amber and
    doctor's exit 0 said all was well, for a receiver that dated every event 2007)."""
    path = uplink_config(tmp_path, closed_port())
    queue = tmp_path / "state" / "outbox.db"
    ids = fill(queue, 16)
    refuse(queue, ids[:12], "captured_at: 2026-10-0{i}T09:00:00+00:00 is older than 30 days")
    refuse(queue, ids[12:13], "bbox: [1, 2, 3, -4] is not a box")
    delivery = by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"]
    assert delivery.level is Level.RED, delivery
    everything = subprocess.run([EDGE_AGENT, "doctor", "--config", str(path), "--only", "delivery"],
                                capture_output=True, text=True, timeout=60)
    assert everything.returncode == 1, everything.stdout + everything.stderr
    with Outbox(queue, OutboxConfig(synchronous="NORMAL"), agent=False) as ob:  # one event went through since
        assert ob.mark_confirmed([("event", ids[13])]) == 1
    delivery = by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"]
    assert delivery.level is Level.YELLOW, delivery
    assert delivery.summary == ("13 events refused by the server in the last 24 h, 12 of them for: captured_at: ... "
                                "is older than 30 days (the server's ingest.horizon_days)"), delivery.summary
    assert "ingest.horizon_days" in delivery.explanation and "1 for: bbox" in delivery.explanation
    assert "queue ls --state rejected --json" in delivery.hint
    out = subprocess.run([EDGE_AGENT, "doctor", "--config", str(path), "--json", "--only", "delivery"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr  # amber, not red: the way to the server works
    check = {c["name"]: c for c in json.loads(out.stdout)["checks"]}["delivery"]
    assert check["level"] == "yellow" and check["summary"] == delivery.summary
    data = check["data"]
    assert (data["rejected"], data["rejected_recent"], data["rejected_recent_events"]) == (13, 13, 13)
    assert data["rejected_reasons"][0] == {"reason": "captured_at: ... is older than 30 days", "count": 12}
    # ...and every event since that one refused again: red, whatever went through that morning.
    time.sleep(0.01)
    refuse(queue, ids[14:16], "captured_at: 2007-04-2{i}T09:00:00+00:00 is older than 3650 days")
    assert by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"].level is Level.RED


def test_rows_refused_more_than_a_day_ago_are_only_mentioned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.link import outbox as outbox_module

    path = uplink_config(tmp_path, closed_port())
    queue = tmp_path / "state" / "outbox.db"
    ids = fill(queue, 2)
    stamp = (datetime.now(UTC) - timedelta(hours=25)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    monkeypatch.setattr(outbox_module, "utc_now_iso", lambda: stamp)  # refused 25 h ago
    refuse(queue, ids, "captured_at: 2026-10-0{i}T09:00:00+00:00 is in the future")
    monkeypatch.undo()
    delivery = by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"]
    assert delivery.level is Level.GREEN, delivery
    assert "2 rows refused by the server more than 24 h ago" in delivery.summary
    assert (delivery.data["rejected"], delivery.data["rejected_recent"]) == (2, 0)


def test_rows_refused_while_the_clock_was_unset_count_as_recent(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused minutes ago by a box whose clock read 1970 (set by NTP since): they were "refused more than 24 h
    ago" and doctor was green. Their time is unknown, so they count as recent."""
    from edge_agent.link import outbox as outbox_module

    path = uplink_config(tmp_path, closed_port())
    queue = tmp_path / "state" / "outbox.db"
    ids = fill(queue, 2)
    monkeypatch.setattr(outbox_module, "utc_now_iso", lambda: "1970-01-01T01:07:00.000Z")
    refuse(queue, ids, "captured_at: 1970-01-01T01:0{i}:00+00:00 is older than the server keeps")
    monkeypatch.undo()
    delivery = by_name(run_checks(str(path), only=["delivery"], options=FAST))["delivery"]
    assert delivery.level is Level.RED, delivery  # recent, and nothing went through since
    assert (delivery.data["rejected"], delivery.data["rejected_recent"]) == (2, 2)


@pytest.mark.services
def test_broker_up_server_down_is_not_all_ok(private_broker: Any, tmp_path: Path) -> None:
    """The field case: the broker takes every message (PUBACK), the fleet server never confirms one."""
    from edge_agent import config as agent_config
    from edge_agent.health import HealthBoard
    from edge_agent.link.uplink import Uplink

    mq = private_broker()
    mq.add_device("veh-quiet", "pw-quiet")
    path = uplink_config(tmp_path, mq.port, ack_timeout_s=0.3, adaptive=False)
    cfg = agent_config.load(str(path))
    fill(cfg.outbox_path, 5)
    from edge_agent.link.writer_lock import WriterLock

    with Outbox(cfg.outbox_path, cfg.outbox) as ob:
        lock = WriterLock(cfg.outbox_path).acquire()  # as `edge-agent run` holds its outbox while it runs
        uplink = Uplink(cfg.uplink, cfg.device.id, ob, HealthBoard())
        uplink.start()
        try:
            wait_for(lambda: all(r["state"] == "sent" and r["attempts"] >= 3 for r in ob.rows()), 30,
                     "every row sent three times")
            results = by_name(run_checks(str(path), only=["broker", "agent", "delivery"], options=FAST))
        finally:
            uplink.stop()
            lock.release()
    assert results["broker"].level is Level.GREEN, results["broker"]
    assert results["agent"].level is Level.GREEN, results["agent"]
    delivery = results["delivery"]
    assert delivery.level is Level.RED and "5 rows sent 3+ times" in delivery.summary, delivery
    assert "fleet server does not confirm" in delivery.explanation and "server/ingest" in delivery.hint


# ------------------------------------------------------------------ the running agent's own view (field test)
def running_agent_config(tmp_path: Path, state: Path, **sections: Any) -> tuple[Path, Any]:
    """A config whose state folder is STATE and whose uplink is on; (path, loaded config)."""
    from edge_agent import config as agent_config

    (tmp_path / "pw").write_text("pw-quiet\n")
    path = write_config(tmp_path, device={"id": "veh-quiet", "state_dir": str(state)}, uplink={
        "enabled": True, "host": "127.0.0.1", "port": closed_port(), "tls": False,
        "password_file": str(tmp_path / "pw"), "heartbeat_s": HEARTBEAT_S}, **sections)
    return path, agent_config.load(str(path))


def status_of(cfg: Any, health: Any, age_s: float = 0.0) -> dict[str, Any]:
    """What the agent's heartbeat writes, as if written AGE_S seconds ago."""
    from edge_agent.link.heartbeat import build_status

    status = build_status("offline", cfg.device.id, None, health)
    status["sent_at"] = (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat(timespec="milliseconds")
    return status


def checks_while_the_agent_runs(path: Path, cfg: Any, health: Any, only: list[str],
                                status_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Doctor's ONLY checks on the config at PATH while an agent runs: this process holds the outbox's writer lock
    and has written HEALTH's status (with STATUS_EXTRA) as the agent's heartbeat does."""
    from edge_agent.link.heartbeat import status_file_of, write_status_file
    from edge_agent.link.writer_lock import WriterLock

    write_status_file(status_file_of(cfg.outbox_path, cfg.uplink.status_file),
                      status_of(cfg, health) | (status_extra or {}))
    lock = WriterLock(cfg.outbox_path).acquire()
    try:
        return by_name(run_checks(str(path), only=only, options=FAST))
    finally:
        lock.release()


def test_an_agent_on_a_full_disk_keeps_its_status_current_and_is_not_called_dead(tmp_path: Path) -> None:
    import os

    from edge_agent.commands.status import collect
    from edge_agent.health import HealthBoard
    from edge_agent.link.heartbeat import read_status_file, status_file_of, write_status_file
    from edge_agent.link.writer_lock import WriterLock
    from tests.test_outbox_full_disk import fill_disk, tmpfs

    with tmpfs(tmp_path / "disk") as disk:
        path, cfg = running_agent_config(tmp_path, disk)
        fill(cfg.outbox_path, 3)
        status_file = status_file_of(cfg.outbox_path, cfg.uplink.status_file)
        health = HealthBoard()
        write_status_file(status_file, status_of(cfg, health, age_s=600))  # its last status before the disk filled
        lock = WriterLock(cfg.outbox_path).acquire()  # the agent runs: it holds its outbox
        try:
            filler = fill_disk(disk)
            # Its status is old: once "the agent is not running" from doctor and status, while it ran.
            agent = by_name(run_checks(str(path), only=["agent"], options=FAST))["agent"]
            assert agent.level is Level.RED and f"the agent runs (pid {os.getpid()})" in agent.summary, agent
            assert "the disk is full" in agent.summary and "not running" not in agent.summary
            assert f"the agent (pid {os.getpid()}) runs but does not rewrite it: the disk is full" in \
                collect(str(path), None)["broker"]
            # ...and the agent's next heartbeat on the full disk is written (in place), refusals counted in it.
            health.count("events_refused_disk_full", 12)
            write_status_file(status_file, status_of(cfg, health))
            assert read_status_file(status_file)["counters"]["events_refused_disk_full"] == 12
            health.count("events_refused_disk_full", 1000)  # a longer status still fits
            write_status_file(status_file, status_of(cfg, health))
            assert read_status_file(status_file)["counters"]["events_refused_disk_full"] == 1012
            assert by_name(run_checks(str(path), only=["agent"], options=FAST))["agent"].level is Level.GREEN
            filler.unlink()
        finally:
            lock.release()


@pytest.mark.parametrize(("gnss", "level", "words"), [
    ("ok", Level.GREEN, "ok (RTK fixed), last fix"), ("lost", Level.RED, "gets no usable NMEA"),
    ("no_fix", Level.YELLOW, "no position from it yet")])
def test_a_receiver_and_camera_held_by_the_running_agent_are_judged_by_what_it_sees(
        tmp_path: Path, gnss: str, level: Level, words: str) -> None:
    # doctor opening the port beside the agent read "not one byte in 5 s", a dead receiver's words, for a sound
    # one; the camera device streams to one reader. While the agent runs, doctor reports the agent's view.
    import os

    from edge_agent.health import HealthBoard
    from edge_agent.link.heartbeat import status_file_of, write_status_file
    from edge_agent.link.writer_lock import WriterLock

    path, cfg = running_agent_config(tmp_path, tmp_path / "state", gnss={"source": "serial", "port": "/dev/ttyNONE9"},
                                     camera={"source": "/dev/video97"})
    health = HealthBoard()
    health.update(gnss=gnss, camera="ok" if gnss == "ok" else "no_frames", fps=9.5, gnss_fix="RTK fixed",
                  last_fix_mono=time.monotonic() - 2 if gnss == "ok" else None)  # RTK: named (it said "ok")
    write_status_file(status_file_of(cfg.outbox_path, cfg.uplink.status_file), status_of(cfg, health))
    alone = by_name(run_checks(str(path), only=["gnss", "camera"], options=FAST))
    assert "held by the running agent" not in alone["gnss"].summary + alone["camera"].summary  # no agent: probed
    lock = WriterLock(cfg.outbox_path).acquire()
    try:
        checks = by_name(run_checks(str(path), only=["gnss", "camera"], options=FAST))
    finally:
        lock.release()
    got = checks["gnss"]
    assert got.level is level and f"held by the running agent (pid {os.getpid()})" in got.summary, got
    assert words in got.summary + got.explanation, got
    camera = checks["camera"]
    assert camera.level is (Level.GREEN if gnss == "ok" else Level.RED), camera
    assert "held by the running agent" in camera.summary and ("9.5 fps" in camera.summary) == (gnss == "ok")


@pytest.mark.parametrize(("link", "level", "words"), [
    ({"state": "connected", "trouble": "another client logs in as 'veh-quiet' and takes the session over"},
     Level.RED, "takes the session over"),
    ({"state": "offline", "last_error": "[Errno 111] Connection refused", "trouble": None}, Level.GREEN,
     "offline ([Errno 111] Connection refused)"),
    ({"state": "connected", "last_error": "disconnected: 7", "trouble": None}, Level.GREEN, "broker offline")])
def test_doctor_and_status_say_why_the_agents_broker_link_fails(tmp_path: Path, link: dict, level: Level,
                                                                words: str) -> None:
    # Two agents with one device id (a second config on the box, a copied card) took the session from each other
    # every few seconds: the agent logged why, but doctor was green ("running, broker offline") and status said
    # "offline" without a reason.
    from edge_agent.health import HealthBoard

    path, cfg = running_agent_config(tmp_path, tmp_path / "state")
    with Outbox(cfg.outbox_path, OutboxConfig()):
        pass  # the agent made its queue; `status` reads it
    health = HealthBoard()
    health.update(uplink=link["state"])
    agent = checks_while_the_agent_runs(path, cfg, health, ["agent"], {"uplink": link})["agent"]
    assert agent.level is level and words in agent.summary + agent.explanation, agent
    shown = subprocess.run([EDGE_AGENT, "status", "--config", str(path), "--json"], capture_output=True, text=True)
    broker = json.loads(shown.stdout)["broker"]
    assert (words in broker) == (level is Level.RED or "offline (" in words), broker
    assert "disconnected: 7" not in broker  # an old error of a link that came back is history


def test_doctor_and_status_quote_why_the_running_agent_lost_its_receiver(tmp_path: Path) -> None:
    # A wrong baud rate (junk bytes) read as "the receiver is silent: unpowered, wrong port": the agent knew better.
    from edge_agent.health import HealthBoard

    path, cfg = running_agent_config(tmp_path, tmp_path / "state", gnss={"source": "serial", "port": "/dev/ttyNONE8"})
    with Outbox(cfg.outbox_path, OutboxConfig()):
        pass
    why = "1201 bytes in 5 s but not one valid NMEA sentence: wrong baud rate (gnss.baud 9600), or not NMEA?"
    health = HealthBoard()
    health.update(gnss="lost", gnss_problem=why)
    gnss = checks_while_the_agent_runs(path, cfg, health, ["gnss"])["gnss"]
    assert gnss.level is Level.RED and why in gnss.explanation and "unpowered" not in gnss.explanation, gnss
    shown = subprocess.run([EDGE_AGENT, "status", "--config", str(path), "--json"], capture_output=True, text=True)
    assert json.loads(shown.stdout)["gnss"]["problem"] == why


def test_a_clock_days_off_is_red_while_the_agent_holds_the_receiver(tmp_path: Path) -> None:
    # The box's clock 2 days ahead while the agent ran: doctor said "NTP state unknown", as for a sound box, and
    # exit 0; only the server saw it. The agent compares the clock with its receiver at each fix.
    from edge_agent.health import HealthBoard

    path, cfg = running_agent_config(tmp_path, tmp_path / "state", gnss={"source": "serial", "port": "/dev/ttyNONE7"})
    health = HealthBoard()
    health.update(gnss="ok", last_fix_mono=time.monotonic(), clock_offset_s=2 * 86400.0)
    clock = checks_while_the_agent_runs(path, cfg, health, ["gnss", "clock"])["clock"]
    assert clock.level is Level.RED and "+48.0 h vs GNSS" in clock.summary, clock


def test_a_model_that_does_not_load_is_amber_while_the_agent_detects_with_its_fallback(tmp_path: Path) -> None:
    # A pushed model cut short: the agent fell back to the bundled model and kept detecting, while doctor's first
    # line said "does not load ... the agent records nothing" and told to use a previous.onnx that was not there.
    from edge_agent.health import HealthBoard

    broken = tmp_path / "models" / "current.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not a model")
    path, cfg = running_agent_config(tmp_path, tmp_path / "state", detector={"model": str(broken)})
    alone = by_name(run_checks(str(path), only=["model"], options=FAST))["model"]
    assert alone.level is Level.RED and "previous.onnx" not in alone.hint and f"remove {broken}" in alone.hint
    health = HealthBoard()
    health.update(model={"name": "bundled", "version": "2", "sha256": "8e3401853551" + "0" * 52,
                         "fallback": "current.onnx does not load: INVALID_PROTOBUF"})
    model = checks_while_the_agent_runs(path, cfg, health, ["model"])["model"]
    assert model.level is Level.YELLOW and "fell back to bundled 2 (8e3401853551) and detects" in model.summary, model
    assert "INVALID_PROTOBUF" in model.explanation


def test_a_config_edited_while_the_agent_runs_is_named(tmp_path: Path) -> None:
    # Doctor judged the edited file (a camera address that did not open, a threshold of 0.95) while the agent ran
    # fine on the old one, and nothing said the two differ.
    from edge_agent.config import file_sha256
    from edge_agent.health import HealthBoard

    path, cfg = running_agent_config(tmp_path, tmp_path / "state")
    health = HealthBoard()
    health.update(config_sha256=file_sha256(path))
    assert checks_while_the_agent_runs(path, cfg, health, ["config"])["config"].level is Level.GREEN
    path.write_text(path.read_text() + "\n# edited while the agent runs\n")
    config = checks_while_the_agent_runs(path, cfg, health, ["config"])["config"]
    assert config.level is Level.YELLOW and "started from another version of this file" in config.summary, config


def test_a_receiver_without_dates_is_amber_while_the_agent_dates_events_by_its_clock(tmp_path: Path) -> None:
    # A receiver sending GGA only: GNSS "ok", yet every event waited a minute for a date and was dated by the
    # box's clock; only a counter in the status file said so.
    from edge_agent.health import HealthBoard

    path, cfg = running_agent_config(tmp_path, tmp_path / "state", gnss={"source": "serial", "port": "/dev/ttyNONE6"})
    health = HealthBoard()
    health.update(gnss="ok", last_fix_mono=time.monotonic())
    assert checks_while_the_agent_runs(path, cfg, health, ["gnss"])["gnss"].level is Level.GREEN
    health.count("events_clock_dated", 3)
    gnss = checks_while_the_agent_runs(path, cfg, health, ["gnss"])["gnss"]
    assert gnss.level is Level.YELLOW and "3 events dated by the box's clock" in gnss.summary, gnss
    assert "RMC" in gnss.hint


@pytest.mark.parametrize("ip_camera", [False, True])
@pytest.mark.parametrize(("m_per_frame", "level"), [(2.0, Level.GREEN), (7.5, Level.YELLOW)])
def test_a_box_too_slow_for_its_speed_is_amber(tmp_path: Path, m_per_frame: float, level: Level,
                                               ip_camera: bool) -> None:
    # Frames processed 5 m or more apart (a Pi at highway speed, a survey sequence replayed raw) saw potholes in
    # 2 frames at most: the agent wrote no event and every check was green. An IP camera, which doctor opens
    # itself, stayed green after that: its own probe of a 20 fps stream said nothing of the agent's rate.
    import contextlib

    import cv2

    from edge_agent.health import HealthBoard
    from tests.mjpeg import mjpeg_camera

    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (120, 160, 3)).astype(np.uint8))
    assert ok
    with mjpeg_camera(jpeg, fps=10, frames=60) if ip_camera else contextlib.nullcontext("/dev/video97") as source:
        path, cfg = running_agent_config(tmp_path, tmp_path / "state", camera={"source": source})
        health = HealthBoard()
        health.update(camera="ok", fps=3.4, m_per_frame=m_per_frame, inference_ms=240.0)
        with_model = level is Level.YELLOW and not ip_camera
        checks = checks_while_the_agent_runs(path, cfg, health, ["camera", "model"] if with_model else ["camera"])
    camera = checks["camera"]
    if with_model:  # doctor times the model beside the agent: the agent's own figure is the one that counts
        assert "the running agent: 240 ms a frame" in checks["model"].summary, checks["model"]
    assert camera.level is level, camera
    assert camera.data["m_per_frame" if not ip_camera or level is Level.YELLOW else "fps"] is not None
    assert ("a frame every 7.5 m" in camera.summary and "fewer than two frames" in camera.explanation) \
        == (level is Level.YELLOW)
    if level is Level.YELLOW:
        assert "240 ms" in camera.explanation and "faster detector" in camera.hint and "camera.fps" in camera.hint
        assert "mirror_pass" not in camera.hint  # it is off: no use advising it


def test_a_status_write_a_power_cut_interrupted_leaves_no_file_for_good(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut between writing the next status and renaming it over the old one left `agent-status.json*` temp
    files in the state folder for good; the uplink removes them as it starts."""
    import os

    from edge_agent.link import heartbeat

    path = tmp_path / "agent-status.json"
    heartbeat.write_status_file(path, {"state": "online"})

    def cut(*_args: Any) -> None:
        raise OSError(5, "Input/output error")  # the power went before the rename

    with monkeypatch.context() as m:
        m.setattr(os, "replace", cut)
        m.setattr(os, "unlink", lambda *_a: None)  # nor did anything clean up after it
        heartbeat.write_status_file(path, {"state": "offline"})
    assert len(list(tmp_path.iterdir())) == 2
    heartbeat.remove_leftovers(path)
    assert [p.name for p in tmp_path.iterdir()] == ["agent-status.json"]
    assert json.loads(path.read_text()) == {"state": "online"}


def test_a_frozen_receiver_is_red_with_what_to_do(tmp_path: Path) -> None:
    """A receiver repeating one fix read green ("ok"), and the clock check advised following it with chrony."""
    from edge_agent.health import HealthBoard

    path, cfg = running_agent_config(tmp_path, tmp_path / "state", gnss={"source": "serial", "port": "/dev/ttyNONE7"})
    health = HealthBoard()
    health.update(gnss="frozen", gnss_problem="the receiver repeats one fix, its time standing at 12:00:07 UTC: "
                                              "power-cycle it")
    gnss = checks_while_the_agent_runs(path, cfg, health, ["gnss"])["gnss"]
    assert gnss.level is Level.RED and "12:00:07" in gnss.explanation and "power-cycle" in gnss.hint, gnss


def test_doctor_leaves_the_port_of_an_agent_without_a_status_alone(tmp_path: Path) -> None:
    """With uplink.enabled = false the agent writes no status file: doctor opened the receiver beside it (as
    root the port's exclusive lock does not hold) and took sentences from its stream."""
    from edge_agent import config as agent_config
    from edge_agent.link.writer_lock import WriterLock

    path = write_config(tmp_path, gnss={"source": "serial", "port": "/dev/ttyNONE8"})
    cfg = agent_config.load(str(path))
    lock = WriterLock(cfg.outbox_path).acquire()
    try:
        gnss = by_name(run_checks(str(path), only=["gnss"], options=FAST))["gnss"]
    finally:
        lock.release()
    assert gnss.level is Level.YELLOW and "writes no status" in gnss.summary and "does not open" in gnss.explanation


def test_a_box_that_drove_far_and_found_nothing_is_amber(tmp_path: Path) -> None:
    # A smeared windscreen: camera, receiver and model all green, 23 km driven with the detector looking and not
    # one event; only the fleet server could tell, days later.
    from edge_agent.health import HealthBoard

    path, cfg = running_agent_config(tmp_path, tmp_path / "state")
    health = HealthBoard()
    health.set_count("driven_m_since_event", 12_000)
    assert checks_while_the_agent_runs(path, cfg, health, ["model"])["model"].level is Level.GREEN
    health.set_count("driven_m_since_event", 23_400)
    model = checks_while_the_agent_runs(path, cfg, health, ["model"])["model"]
    assert model.level is Level.YELLOW and "drove 23 km since it started and found nothing" in model.summary, model
    assert "windscreen" in model.hint and "finds_nothing" in model.hint
    health.count("events", 4)
    model = checks_while_the_agent_runs(path, cfg, health, ["model"])["model"]
    assert "since its last finding" in model.summary, model
