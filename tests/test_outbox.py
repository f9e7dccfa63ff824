"""The outbox on its own: row life cycle, send order, sequence numbers, migrations, corrupt files."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge_agent.config.outbox import OutboxConfig
from edge_agent.health import HealthBoard
from edge_agent.link.outbox import Outbox
from edge_agent.link.outbox_file import OutboxUnavailable
from edge_agent.link.outbox_schema import SCHEMA_VERSION
from roadmon_contract import validate
from roadmon_contract.ids import uuid7
from roadmon_contract.times import utc_now_iso


def make_event(outbox: Outbox, severity: float = 0.5, **extra) -> dict:
    """A schema-valid event, as the pipeline writes it."""
    event = {
        "schema": "roadmon.event/1", "event_id": str(uuid7()), "device_id": "veh-t", "seq": outbox.next_seq(),
        "captured_at": "2026-11-28T13:45:32.120Z", "class": "pothole", "confidence": 0.8,
        "position": {"lat": 48.1, "lon": 11.5, "h_accuracy_m": 2.0},
        "vehicle": {"lat": 48.1, "lon": 11.5, "speed_mps": 10.0, "heading_deg": 90.0, "h_accuracy_m": 2.0},
        "size_m": {"width": 0.5, "length": 0.4}, "severity": severity, "frames": 5, "bbox": [1, 2, 30, 40],
        "model": {"name": "m", "version": "1", "sha256": "0" * 64},
    }
    event.update(extra)
    return event


def make_coverage() -> dict:
    return {"coverage_id": str(uuid7()), "device_id": "veh-t", "started_at": "2026-11-28T13:45:00.000Z",
            "ended_at": "2026-11-28T13:46:00.000Z", "line": [[11.5, 48.1], [11.51, 48.1]],
            "detector_active": True, "model_sha256": None}


@pytest.fixture
def outbox(tmp_path: Path):
    with Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL")) as ob:
        yield ob


def test_life_cycle_pending_sent_confirmed_once(outbox: Outbox) -> None:
    event = make_event(outbox, thumbnail_jpeg_b64="QUJD")
    assert outbox.add_event(event)
    [msg] = outbox.due(10, resend_after_s=60)
    body = json.loads(msg.body)
    assert body == event and validate.errors("event", body) == []   # the thumbnail travels with it
    assert (msg.kind, msg.attempts) == ("event", 1)
    assert outbox.due(10, resend_after_s=60) == []                   # in flight: not due again yet
    key = [("event", event["event_id"])]
    assert outbox.mark_sent(key) == 1 and outbox.states()[event["event_id"]] == "sent"
    assert outbox.mark_confirmed(key) == 1
    assert outbox.mark_confirmed(key) == 0                           # a second ack changes nothing
    assert outbox.mark_sent(key) == 0                                # a late PUBACK cannot go backwards
    stats = outbox.stats()
    assert stats["queue_depth"] == 0 and stats["events"]["confirmed"] == 1
    assert stats["last_confirmed_at"] and stats["oldest_pending_at"] is None


def test_unconfirmed_rows_are_due_again_after_the_timeout(outbox: Outbox) -> None:
    event = make_event(outbox)
    outbox.add_event(event)
    assert len(outbox.due(10, resend_after_s=0.0)) == 1
    outbox.mark_sent([("event", event["event_id"])])                  # PUBACK, but no server ack
    [again] = outbox.due(10, resend_after_s=60)
    assert again.id == event["event_id"] and again.attempts == 2


def test_drain_order_is_severity_then_age_then_coverage(outbox: Outbox) -> None:
    cov = make_coverage()
    outbox.add_coverage(cov)
    low_old, high, low_new = (make_event(outbox, s) for s in (0.1, 0.9, 0.1))
    for event in (low_old, high, low_new):
        outbox.add_event(event)
    order = [(m.kind, m.id) for m in outbox.due(10, 60)]
    assert order == [("event", high["event_id"]), ("event", low_old["event_id"]),
                     ("event", low_new["event_id"]), ("coverage", cov["coverage_id"])]
    assert validate.errors("coverage", cov) == []


def test_due_hands_out_at_most_limit_rows_across_kinds(outbox: Outbox) -> None:
    """The uplink's in-flight window is the limit: never a row more, also when coverage fills the rest."""
    events = [make_event(outbox) for _ in range(5)]
    for event in events:
        outbox.add_event(event)
    covs = [make_coverage() for _ in range(3)]
    for cov in covs:
        outbox.add_coverage(cov)
    assert [m.id for m in outbox.due(3, 60)] == [e["event_id"] for e in events[:3]]
    assert [m.id for m in outbox.due(3, 60)] == [events[3]["event_id"], events[4]["event_id"],
                                                 covs[0]["coverage_id"]]
    assert [m.id for m in outbox.due(1, 60)] == [covs[1]["coverage_id"]]
    assert outbox.due(0, 60) == []
    assert [m.id for m in outbox.due(5, 60)] == [covs[2]["coverage_id"]]


def test_one_at_a_time_the_most_severe_leaves_first_and_equals_keep_their_order(outbox: Outbox) -> None:
    events = [make_event(outbox, s) for s in (0.2, 0.9, 0.5, 0.9, 0.2)]
    for event in events:
        outbox.add_event(event)
    outbox.add_coverage(cov := make_coverage())
    drained = [outbox.due(1, 60)[0].id for _ in range(6)]
    assert drained == [events[i]["event_id"] for i in (1, 3, 2, 0, 4)] + [cov["coverage_id"]]
    assert outbox.due(1, 60) == []


def test_one_severity_point_decides_the_order(outbox: Outbox) -> None:
    events = [make_event(outbox, s) for s in (0.52, 0.53, 0.0, 0.01, 1.0, 0.99)]
    for event in events:
        outbox.add_event(event)
    assert [m.id for m in outbox.due(10, 60)] == [events[i]["event_id"] for i in (4, 5, 1, 0, 3, 2)]


def test_a_window_of_zero_or_less_hands_out_nothing(outbox: Outbox) -> None:
    outbox.add_event(make_event(outbox))
    outbox.add_coverage(make_coverage())
    assert outbox.due(0, 60) == [] and outbox.due(-1, 60) == []
    assert len(outbox.due(2, 60)) == 2  # nothing was counted as sent by the empty calls


def test_queue_depth_is_pending_plus_sent(outbox: Outbox) -> None:
    events = [make_event(outbox) for _ in range(3)]
    for event in events:
        outbox.add_event(event)
    outbox.add_coverage(make_coverage())
    [first] = outbox.due(1, 60)
    outbox.mark_sent([("event", first.id)])
    stats = outbox.stats()
    assert (stats["events"]["pending"], stats["events"]["sent"], stats["queue_depth"]) == (2, 1, 4)
    outbox.mark_confirmed([("event", first.id)])
    assert outbox.stats()["queue_depth"] == 3


def test_a_new_outbox_file_hands_freed_pages_back_incrementally(tmp_path: Path) -> None:
    with Outbox(tmp_path / "new.db") as ob:
        assert ob.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL, for the disk guard


def test_duplicate_event_is_stored_once(outbox: Outbox) -> None:
    event = make_event(outbox)
    assert outbox.add_event(event) and outbox.add_event(dict(event))
    assert outbox.stats()["events"]["pending"] == 1


@pytest.mark.parametrize("bad, words", [
    ("not a dict", "JSON object"),
    ({"severity": 0.2}, "event_id"),
    ({"event_id": "x", "severity": "high"}, "severity"),
    ({"event_id": "x", "severity": 0.1, "when": object()}, "JSON"),
])
def test_bad_events_get_a_clear_error_and_change_nothing(outbox: Outbox, bad, words) -> None:
    with pytest.raises(ValueError, match=words):
        outbox.add_event(bad)
    assert outbox.stats()["queue_depth"] == 0


def test_seq_survives_restart_and_rows_are_due_again(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        for _ in range(3):
            ob.add_event(make_event(ob))
        assert len(ob.due(10, resend_after_s=3600)) == 3             # "in flight" when the process dies
        ob.next_seq()                                                 # taken, never stored: may be reused
    with Outbox(path) as ob:
        assert ob.next_seq() == 4
        assert len(ob.due(10, resend_after_s=3600)) == 3             # a new process resends at once


def test_synchronous_mode_is_configurable(tmp_path: Path) -> None:
    for mode, value in (("FULL", 2), ("NORMAL", 1)):
        with Outbox(tmp_path / f"{mode}.db", OutboxConfig(synchronous=mode)) as ob:
            ob.due(1, 1)                                              # state changes run at NORMAL...
            ob.add_event(make_event(ob))                              # ...new events at the configured mode
            assert ob.conn.execute("PRAGMA synchronous").fetchone()[0] == value
            assert ob.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_schema_version_is_recorded_and_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        assert ob.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        Outbox(path)


def test_retry_and_purge(outbox: Outbox) -> None:
    a, b = make_event(outbox), make_event(outbox)
    outbox.add_event(a)
    outbox.add_event(b)
    outbox.due(10, 3600)
    outbox.mark_confirmed([("event", a["event_id"])])
    assert outbox.due(10, 3600) == []
    assert outbox.retry() == 1
    assert [m.id for m in outbox.due(10, 3600)] == [b["event_id"]]
    assert outbox.purge_confirmed() == 1
    assert set(outbox.states()) == {b["event_id"]}


def test_resend_puts_back_what_was_confirmed_since_a_time_and_what_was_refused(outbox: Outbox) -> None:
    old, new, unset, refused, waiting = (make_event(outbox) for _ in range(5))
    for event in (old, new, unset, refused, waiting):
        outbox.add_event(event)
    outbox.due(10, 3600)
    outbox.mark_confirmed([("event", e["event_id"]) for e in (old, new, unset)])
    outbox.mark_rejected([(refused["event_id"], "database refused: duplicate key")])
    stamps = {old["event_id"]: "2026-12-05T23:59:59.000Z", new["event_id"]: "2026-12-06T02:00:00.000Z",
              unset["event_id"]: "1970-01-01T00:05:00.000Z"}  # confirmed before the clock was set: kept
    for event_id, stamp in stamps.items():
        outbox.conn.execute("UPDATE events SET confirmed_at = ? WHERE event_id = ?", (stamp, event_id))
    since = datetime(2026, 12, 6, 3, 0, tzinfo=timezone(timedelta(hours=1)))  # 02:00 UTC
    assert outbox.resend(since) == {"event": 2, "coverage": 0}
    states = outbox.states()
    assert states[new["event_id"]] == states[unset["event_id"]] == "pending"
    assert states[old["event_id"]] == "confirmed" and states[refused["event_id"]] == "rejected"
    assert outbox.resend(None, rejected=True) == {"event": 1, "coverage": 0}
    assert outbox.states()[refused["event_id"]] == "pending"
    assert outbox.resend(None) == {"event": 0, "coverage": 0}
    assert {m.id for m in outbox.due(10, 3600)} == {new["event_id"], unset["event_id"], refused["event_id"]}
    assert outbox.states()[waiting["event_id"]] == "pending"  # in flight, never confirmed: left to its ack timeout


def test_garbage_file_is_moved_aside_and_a_new_one_started(tmp_path: Path, caplog) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 500)
    health = HealthBoard()
    with caplog.at_level(logging.ERROR), Outbox(path, health=health) as ob:
        assert ob.moved_aside is not None and ob.moved_aside.exists()
        assert ob.add_event(make_event(ob))
    assert "corrupt" in caplog.text and str(ob.moved_aside) in caplog.text
    assert health.snapshot()["counters"]["outbox_corrupt_moved_aside"] == 1


def test_damaged_pages_fail_quick_check_and_are_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as ob:
        for _ in range(300):
            ob.add_event(make_event(ob, thumbnail_jpeg_b64="A" * 2000))
        ob.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    for n in range(3, len(data) // page, 7):                         # scribble over interior pages
        data[n * page + 8: n * page + 200] = b"\xff" * 192
    path.write_bytes(bytes(data))
    with Outbox(path) as ob:
        assert ob.moved_aside is not None
        assert ob.stats()["queue_depth"] < 300  # what the damaged b-tree still reaches is salvaged (below)
        assert ob.add_event(make_event(ob))


def test_rows_of_a_damaged_queue_are_salvaged_and_its_numbers_go_on(tmp_path: Path, caplog) -> None:
    """A torn write on a card that ignores flushes damaged the queue's `meta` page: quick_check fails and the
    queue is moved aside. Its unsent events were stranded there (the agent went on with an empty queue from seq
    1, and `status` said 0 unconfirmed); every row SQLite can still read now comes back."""
    path = tmp_path / "outbox.db"
    with Outbox(path) as ob:
        sent = [make_event(ob) for _ in range(17)]
        waiting = [make_event(ob, thumbnail_jpeg_b64="A" * 3000) for _ in range(17)]
        for event in sent + waiting:
            assert ob.add_event(event)
        ob.mark_confirmed([("event", e["event_id"]) for e in sent])
        ob.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        meta_page = ob.conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'meta'").fetchone()[0]
    data = bytearray(path.read_bytes())
    data[(meta_page - 1) * 4096:meta_page * 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    health = HealthBoard()
    with caplog.at_level(logging.ERROR), Outbox(path, health=health) as ob:
        assert ob.moved_aside is not None
        assert set(ob.states()) == {e["event_id"] for e in waiting}
        assert ob.stats()["queue_depth"] == 17
        assert make_event(ob)["seq"] == 35  # on from the moved queue's highest, not 1 again
    assert not ob.moved_aside.exists() and list(tmp_path.glob("outbox.db.salvaged-*"))
    assert "salvaged 17 unconfirmed rows" in caplog.text
    assert health.snapshot()["counters"]["outbox_salvaged"] == 1
    with Outbox(path) as ob:  # salvaged once only
        assert ob.stats()["queue_depth"] == 17


def test_rows_the_server_rejects_for_good_are_done_and_counted(outbox: Outbox) -> None:
    bad, good = make_event(outbox), make_event(outbox)
    outbox.add_event(bad)
    outbox.add_event(good)
    assert outbox.mark_rejected([(bad["event_id"], "position/lat: 95 is greater than the maximum of 90")]) == 1
    assert [m.id for m in outbox.due(10, 0.0)] == [good["event_id"]]     # never sent again
    [row] = [r for r in outbox.rows("event") if r["id"] == bad["event_id"]]
    assert row["state"] == "rejected" and "lat" in row["rejected"]
    stats = outbox.stats()
    assert stats["dropped"] == {"rejected_by_server": 1}
    # Done, so not in the queue depth, and apart from what the server stored: 'confirmed' means on the map.
    assert stats["events"] == {"pending": 1, "sent": 0, "confirmed": 0, "rejected": 1}
    assert (stats["queue_depth"], stats["rejected"]) == (1, 1)
    assert outbox.states()[bad["event_id"]] == "rejected"
    assert [r["id"] for r in outbox.rows("event", "rejected")] == [bad["event_id"]]
    assert outbox.rows("event", "confirmed") == []
    assert [state for state, _ in outbox.iter_events()] == ["rejected", "pending"]


def test_purging_confirmed_rows_keeps_the_rejected_ones(outbox: Outbox) -> None:
    stored, refused = make_event(outbox), make_event(outbox)
    for event in (stored, refused):
        outbox.add_event(event)
    outbox.mark_confirmed([("event", stored["event_id"])])
    outbox.mark_rejected([(refused["event_id"], "bbox: not 4 numbers")])
    assert outbox.purge_confirmed() == 1 and outbox.states() == {refused["event_id"]: "rejected"}
    assert outbox.purge_rejected() == 1 and outbox.states() == {}


def test_rejections_group_the_reasons_without_each_events_own_time(outbox: Outbox) -> None:
    events = [make_event(outbox) for _ in range(4)]
    coverage = make_coverage()
    for event in events:
        outbox.add_event(event)
    outbox.add_coverage(coverage)
    # What the server's validation writes: each event's own captured_at in the reason.
    old = [(e["event_id"], f"captured_at: 2026-10-0{i + 1}T09:00:0{i}.5+00:00 is older than 30 days")
           for i, e in enumerate(events[:3])]
    outbox.mark_rejected([*old, (events[3]["event_id"], "bbox: [1, 2, 3, -4] is not a box"),
                          (coverage["coverage_id"], "started_at: 2026-10-01T09:00:00Z is older than 30 days")])
    found = outbox.rejections()
    assert (found["count"], found["events"], found["coverage"]) == (5, 4, 1)
    assert found["reasons"] == [{"reason": "captured_at: ... is older than 30 days", "count": 3},
                                {"reason": "bbox: [1, 2, 3, -4] is not a box", "count": 1},
                                {"reason": "started_at: ... is older than 30 days", "count": 1}]
    assert found["last_at"] is not None and outbox.rejections(top=1)["reasons"][0]["count"] == 3
    assert outbox.rejections(since=utc_now_iso(-60))["count"] == 0           # none refused after a minute from now


def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    from edge_agent.link.outbox_schema import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO events (event_id, priority, severity, created_at, payload) "
               "VALUES ('old-1', 50, 0.5, '2026-01-01T00:00:00.000Z', '{\"event_id\":\"old-1\"}')")
    db.close()
    with Outbox(path) as ob:
        assert ob.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3
        assert ob.states() == {"old-1": "pending"}
        assert ob.mark_rejected([("old-1", "test")]) == 1
        # Counted through the index of refused rows (version 3), not by reading every row of the queue.
        plan = ob.conn.execute("EXPLAIN QUERY PLAN SELECT COUNT(*) FROM events WHERE rejected IS NOT NULL").fetchall()
        assert "events_rejected" in str(plan) and ob.stats()["rejected"] == 1


def test_a_version_2_queue_is_read_before_the_upgraded_agent_first_starts(tmp_path: Path) -> None:
    """After an upgrade a technician runs status or doctor before starting the agent: version 3 only added an
    index, so the old queue's rows are shown (they were refused with "start the agent once"), unchanged."""
    from edge_agent.link.outbox_schema import MIGRATIONS

    path = tmp_path / "v2.db"
    db = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](db)
    MIGRATIONS[1](db)
    db.execute("PRAGMA user_version = 2")
    db.execute("INSERT INTO events (event_id, priority, severity, created_at, payload) "
               "VALUES ('old-1', 50, 0.5, '2026-01-01T00:00:00.000Z', '{\"event_id\":\"old-1\"}')")
    db.close()
    with Outbox(path, read_only=True) as reader:
        assert reader.stats()["events"]["pending"] == 1
    with Outbox(path) as agent:  # the agent's own start upgrades it
        assert agent.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA user_version = 1")
    db.close()
    with pytest.raises(OutboxUnavailable, match="has schema version 1; this agent reads version"):
        Outbox(path, read_only=True)
