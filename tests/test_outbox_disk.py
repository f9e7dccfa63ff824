"""A full disk: the outbox keeps running, frees space in policy order, never deletes a pending event and
counts what it refuses, visibly."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.config.outbox import OutboxConfig
from edge_agent.health import HealthBoard
from edge_agent.link.heartbeat import build_status
from edge_agent.link.outbox import Outbox
from roadmon_contract.times import utc_iso
from tests.test_outbox import make_coverage, make_event

THUMB = "Q" * 40_000   # a 40 kB thumbnail


def counts(ob: Outbox) -> dict[str, int]:
    q = {
        "confirmed_thumbs": "SELECT COUNT(*) FROM events WHERE state = 'confirmed' AND media IS NOT NULL",
        "old_confirmed": "SELECT COUNT(*) FROM events WHERE state = 'confirmed' AND confirmed_at < '2001'",
        "recent_confirmed": "SELECT COUNT(*) FROM events WHERE state = 'confirmed' AND confirmed_at > '2001'",
        "low_pending_thumbs": "SELECT COUNT(*) FROM events WHERE state != 'confirmed' AND severity < 0.3"
                              " AND media IS NOT NULL",
        "pending": "SELECT COUNT(*) FROM events WHERE state != 'confirmed'",
        "sent": "SELECT COUNT(*) FROM events WHERE state = 'sent'",
    }
    return {k: ob.conn.execute(sql).fetchone()[0] for k, sql in q.items()}


def test_budget_frees_space_in_policy_order_and_refuses_low_severity(tmp_path: Path) -> None:
    health = HealthBoard()
    cfg = OutboxConfig(budget_mb=3, free_floor_mb=0, low_severity=0.3, synchronous="NORMAL")
    ob = Outbox(tmp_path / "o.db", cfg, health)
    confirmed = [make_event(ob, 0.9, thumbnail_jpeg_b64=THUMB) for _ in range(20)]
    for e in confirmed:
        assert ob.add_event(e)
    ob.mark_confirmed([("event", e["event_id"]) for e in confirmed])
    # Half of them were confirmed long ago: past the retention.
    ob.conn.execute("UPDATE events SET confirmed_at = '2000-01-01T00:00:00.000Z' WHERE id <= 10")
    low = [make_event(ob, 0.1, thumbnail_jpeg_b64=THUMB) for _ in range(10)]
    for e in low:
        assert ob.add_event(e)
    # Half of them are out with the broker (PUBACKed, not yet confirmed by the server): just as undeletable.
    ob.mark_sent([("event", e["event_id"]) for e in low[:5]])
    start = counts(ob)
    assert start == {"confirmed_thumbs": 20, "old_confirmed": 10, "recent_confirmed": 10,
                     "low_pending_thumbs": 10, "pending": 10, "sent": 5}

    accepted_pending = 10
    history = []
    for _ in range(200):   # fill until every freeing step is spent
        high = make_event(ob, 0.8, thumbnail_jpeg_b64=THUMB)
        assert ob.add_event(high), "a high-severity event is never refused by the budget"
        accepted_pending += 1
        history.append(counts(ob))
        if history[-1]["recent_confirmed"] == 0 and ob.stats()["disk_tight"]:
            break
    for snap in history:
        # Policy order: each step only after the earlier ones are exhausted.
        if snap["old_confirmed"] < 10:
            assert snap["confirmed_thumbs"] == 0
        if snap["low_pending_thumbs"] < 10:
            assert snap["confirmed_thumbs"] == 0 and snap["old_confirmed"] == 0
        if snap["recent_confirmed"] < 10:
            assert snap["low_pending_thumbs"] == 0
    # The first pass got by with the confirmed thumbnails alone.
    assert any(s["confirmed_thumbs"] == 0 and s["old_confirmed"] == 10 and s["low_pending_thumbs"] == 10
               for s in history)
    final = counts(ob)
    assert final["pending"] == accepted_pending, "no pending event was deleted"
    assert final["sent"] == 5, "no sent-but-unconfirmed event was deleted"
    assert final["confirmed_thumbs"] == 0 and final["low_pending_thumbs"] == 0 and final["recent_confirmed"] == 0

    # Nothing left to free: new low-severity events and coverage are refused and counted; the agent goes on.
    assert ob.stats()["disk_tight"]
    assert ob.add_event(make_event(ob, 0.1)) is False
    assert ob.add_coverage(make_coverage()) is False
    assert ob.add_event(make_event(ob, 0.95))
    stats = ob.stats()
    assert stats["dropped"] == {"events_refused_low_severity": 1, "coverage_refused": 1}
    assert health.snapshot()["outbox"] == "full"
    status = build_status("online", "veh-t", ob, health)
    assert status["dropped"]["events_refused_low_severity"] == 1
    # Thumbnails of low-severity events are gone but the events themselves still go out, whole.
    lows = {e["event_id"] for e in low}
    sent = {m.id for m in ob.due(10_000, 60)}
    assert lows <= sent
    ob.close()
    with Outbox(tmp_path / "o.db", cfg) as again:                    # the counters survive a restart
        assert again.stats()["dropped"]["events_refused_low_severity"] == 1


def test_free_space_floor_acts_like_a_full_budget(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    cfg = OutboxConfig(budget_mb=1000, free_floor_mb=free_mb + 10_000)
    with Outbox(tmp_path / "o.db", cfg, HealthBoard()) as ob:
        assert ob.add_event(make_event(ob, 0.2)) is False
        assert ob.add_event(make_event(ob, 0.7)) is True
        assert ob.stats()["dropped"] == {"events_refused_low_severity": 1}


def test_a_really_full_disk_refuses_without_crashing_or_losing(tmp_path: Path) -> None:
    health = HealthBoard()
    with Outbox(tmp_path / "o.db", OutboxConfig(synchronous="NORMAL"), health) as ob:
        kept = []
        for _ in range(5):
            e = make_event(ob, 0.9)
            assert ob.add_event(e)
            kept.append(e["event_id"])
        pages = ob.conn.execute("PRAGMA page_count").fetchone()[0]
        ob.conn.execute(f"PRAGMA max_page_count = {pages + 2}")     # the filesystem is full from here on
        refused = 0
        for _ in range(20):
            e = make_event(ob, 0.9, thumbnail_jpeg_b64=THUMB)
            if ob.add_event(e):
                kept.append(e["event_id"])
            else:
                refused += 1
        assert refused > 0
        assert ob.dropped["events_refused_disk_full"] == refused
        assert health.snapshot()["outbox"] == "full"
        assert set(kept) <= set(ob.states())
        assert ob.conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_confirmed_rows_past_the_retention_go_whatever_the_space(tmp_path: Path, monkeypatch) -> None:
    """Only a tight disk used to delete them: a box with room kept years of where its vehicle went (a
    data-protection review). Unconfirmed rows and rows the unset clock stamped stay."""
    from edge_agent.link import outbox as outbox_module

    cfg = OutboxConfig(retention_days=7, free_floor_mb=0)
    ob = Outbox(tmp_path / "o.db", cfg)
    events = [make_event(ob, 0.9) for _ in range(5)]
    cover = [make_coverage() for _ in range(2)]
    for e in events:
        assert ob.add_event(e)
    for c in cover:
        assert ob.add_coverage(c)
    ob.mark_confirmed([("event", e["event_id"]) for e in events[:4]] + [("coverage", c["coverage_id"]) for c in cover])
    month_ago = utc_iso(datetime.now(UTC) - timedelta(days=30))
    ob.conn.execute("UPDATE events SET confirmed_at = ? WHERE event_id = ?", (month_ago, events[0]["event_id"]))
    ob.conn.execute("UPDATE events SET confirmed_at = '1970-01-01T00:05:00.000Z' WHERE event_id = ?",
                    (events[1]["event_id"],))
    ob.conn.execute("UPDATE coverage SET confirmed_at = ? WHERE coverage_id = ?", (month_ago, cover[0]["coverage_id"]))
    ob.conn.execute("UPDATE events SET created_at = ? WHERE event_id = ?", (month_ago, events[4]["event_id"]))

    def kept() -> tuple[set[str], set[str]]:
        return ({r[0] for r in ob.conn.execute("SELECT event_id FROM events")},
                {r[0] for r in ob.conn.execute("SELECT coverage_id FROM coverage")})

    everything = ({e["event_id"] for e in events}, {c["coverage_id"] for c in cover})
    assert ob.add_event(make_event(ob, 0.9)) and kept()[0] >= everything[0]  # not at every write
    monkeypatch.setattr(outbox_module, "EXPIRE_EVERY_S", 0.0)
    assert ob.add_event(make_event(ob, 0.9))
    events_left, coverage_left = kept()
    assert events[0]["event_id"] not in events_left and cover[0]["coverage_id"] not in coverage_left
    assert {e["event_id"] for e in events[1:]} <= events_left and cover[1]["coverage_id"] in coverage_left
    ob.close()
    # And at the agent's start, with the disk as roomy as ever.
    monkeypatch.setattr(outbox_module, "EXPIRE_EVERY_S", 600.0)
    ob = Outbox(tmp_path / "o.db", OutboxConfig(retention_days=0, free_floor_mb=0))
    events_left, coverage_left = kept()
    assert events[2]["event_id"] not in events_left and not coverage_left
    assert {events[1]["event_id"], events[4]["event_id"]} <= events_left  # no age; not confirmed
    ob.close()


def test_a_new_queue_is_not_readable_by_every_user(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        ob = Outbox(tmp_path / "o.db", OutboxConfig(free_floor_mb=0))
        assert ob.add_event(make_event(ob, 0.9))
        for name in ("o.db", "o.db-wal", "o.db-shm"):
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode & 0o007 == 0, f"{name}: {oct(mode)}"
        ob.close()
    finally:
        os.umask(old)
