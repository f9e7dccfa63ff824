"""The store on its own: a batch's bookkeeping, dead letters (capped, purged) and device rows on PostGIS (the
event SQL is exercised by the ingest and aggregate tests)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from fleet_server import metrics
from fleet_server.config import AggregateConfig
from fleet_server.migrate import migrate
from fleet_server.store import Batch, RejectPolicy, Stored, _segment_boxes, purge_rejected, store_batch, store_rejected
from fleet_server.validate import Rejection

AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_a_batch_counts_every_message_it_holds() -> None:
    batch = Batch(events=[({"event_id": "a"}, AT)] * 2, coverage=[({"coverage_id": "c"}, AT)] * 3,
                  statuses=[("veh-1", {}, AT)] * 4, results=[("veh-1", "echo", {})] * 5,
                  rejected=[Rejection("mqtt", None, None, "bad", b"x")] * 7)
    assert len(batch) == 2 + 3 + 4 + 5 + 7
    batch.extend(Batch(events=[({"event_id": "b"}, AT)], raw={"b": "{}"}))
    assert len(batch) == 22 and batch.raw == {"b": "{}"}
    assert len(Batch()) == 0


def test_duplicates_are_the_acknowledged_events_that_were_not_new() -> None:
    stored = Stored(new_events={"a", "b"},
                    acks={"veh-1": {"event_ids": ["a", "b", "c"], "coverage_ids": ["x"]},
                          "veh-2": {"event_ids": ["d"], "coverage_ids": []}})
    assert stored.duplicates == 2  # c and d were stored before: acknowledged again, not stored again
    assert Stored().duplicates == 0


def _counter(counter) -> float:
    return counter._value.get()


@pytest.fixture
def db(fresh_db: str) -> Iterator[psycopg.Connection]:
    migrate(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        yield conn


def _rejection(device: str | None, n: int) -> Rejection:
    return Rejection("mqtt", f"roadmon/v1/{device}/event", device, f"bad {n}", b"x" * 10)


@pytest.mark.services
def test_dead_letters_are_capped_per_device_and_hour_counting_what_is_already_kept(db) -> None:
    policy = RejectPolicy(per_device_hour=3, keep_bytes=4)
    assert store_rejected(db, [], policy) == 0
    assert store_rejected(db, [_rejection("veh-a", 0)], policy) == 0  # one kept within the last hour already
    dropped_before = _counter(metrics.INGEST_REJECTED_DROPPED)
    batch = [_rejection("veh-a", n) for n in range(1, 5)] + [_rejection("veh-b", n) for n in range(4)] \
        + [_rejection(None, 9)]
    # veh-a: 1 kept before + 2 more reach the cap of 3; veh-b: 3 of 4. The 3 others are only counted.
    assert store_rejected(db, batch, policy) == 3
    assert _counter(metrics.INGEST_REJECTED_DROPPED) - dropped_before == 3
    kept = dict(db.execute("SELECT coalesce(device_id, '-'), count(*) FROM rejected GROUP BY 1").fetchall())
    assert kept == {"veh-a": 3, "veh-b": 3, "-": 1}
    reasons = [r[0] for r in db.execute("SELECT reason FROM rejected WHERE device_id = 'veh-a' ORDER BY id")]
    assert reasons == ["bad 0", "bad 1", "bad 2"]  # the first ones are kept, not the last
    assert {bytes(r[0]) for r in db.execute("SELECT raw FROM rejected")} == {b"xxxx"}
    # A cap lowered below what a device already has keeps none of its new ones.
    assert store_rejected(db, [_rejection("veh-a", 7), _rejection("veh-c", 1)], RejectPolicy(per_device_hour=2)) == 1
    assert db.execute("SELECT count(*) FROM rejected WHERE device_id = 'veh-a'").fetchone()[0] == 3


def test_segment_boxes_bound_each_segment_of_a_coverage_line() -> None:
    line = [[11.5, 48.1], [11.6, 48.0], [11.55, 48.2]]  # [lon, lat] as sent
    assert _segment_boxes(line) == [(48.0, 11.5, 48.1, 11.6), (48.0, 11.55, 48.2, 11.6)]
    assert _segment_boxes([[11.5, 48.1]]) == [(48.1, 11.5, 48.1, 11.5)]  # one point: a box around it


@pytest.mark.services
def test_purging_dead_letters_keeps_the_retention_window(db) -> None:
    store_rejected(db, [_rejection("veh-a", n) for n in range(3)])
    db.execute("UPDATE rejected SET received_at = now() - make_interval(hours => 30) WHERE reason = 'bad 0'")
    db.execute("UPDATE rejected SET received_at = now() - make_interval(hours => 20) WHERE reason = 'bad 1'")
    assert purge_rejected(db, retention_days=1.0) == 1
    assert sorted(r[0] for r in db.execute("SELECT reason FROM rejected")) == ["bad 1", "bad 2"]
    assert purge_rejected(db, retention_days=0.5) == 1  # 12 h: the 20-hour-old one goes too


@pytest.mark.services
def test_a_batch_of_only_a_status_and_a_command_result_registers_and_updates_its_device(db) -> None:
    status = {"state": "online", "queue_depth": 7, "inference_ms": 31.5, "fix": {"lat": 48.1, "lon": 11.5}}
    store_batch(db, Batch(statuses=[("veh-new", status, AT)], results=[("veh-new", "echo", {"ok": True})]),
                AggregateConfig())
    row = db.execute("SELECT state, queue_depth, inference_ms, last_seen IS NOT NULL FROM devices "
                     "WHERE id = 'veh-new'").fetchone()
    assert row == ("online", 7, 31.5, True)
    assert db.execute("SELECT name, payload FROM command_results WHERE device_id = 'veh-new'").fetchall() == \
        [("echo", {"ok": True})]
