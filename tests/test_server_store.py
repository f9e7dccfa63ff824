"""The store's batch bookkeeping on its own (the SQL is exercised on PostGIS by the ingest and aggregate tests)."""

from __future__ import annotations

from datetime import UTC, datetime

from fleet_server.store import Batch, Stored
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
