"""The uplink against the real fleet server's ingest (not the stand-in ack server): every valid event ends
up in PostGIS and confirmed on the box; one the server refuses comes back as `rejected` and is not sent
again."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from edge_agent.config.outbox import OutboxConfig
from edge_agent.health import HealthBoard
from edge_agent.link.outbox import Outbox, utc_now_iso
from edge_agent.link.uplink import Uplink
from tests.server_fixtures import make_cfg, workers  # noqa: F401  (fixtures)
from tests.test_outbox import make_coverage, make_event
from tests.test_uplink import login, uplink_cfg, wait_for

pytestmark = pytest.mark.services


def test_real_server_confirms_and_rejects(make_cfg, workers, mqtt_device, fresh_db, service_info,  # noqa: F811
                                          tmp_path: Path) -> None:
    device, password = mqtt_device()
    workers(make_cfg(devices=[device]), 1)
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    now = utc_now_iso()
    good = [make_event(outbox, severity=i / 50, device_id=device, captured_at=now) for i in range(50)]
    for event in good:
        assert outbox.add_event(event)
    bad = make_event(outbox, device_id=device, captured_at=now)
    bad["bbox"] = [1, 2, 3, -4]                      # the server's schema check refuses it for good
    assert outbox.add_event(bad)
    cov = make_coverage() | {"device_id": device, "started_at": now, "ended_at": now}
    assert outbox.add_coverage(cov)
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password), ack_timeout_s=2.0), device,
                    outbox, HealthBoard())
    uplink.start()
    try:
        wait_for(lambda: outbox.stats()["queue_depth"] == 0, 30, "the server confirmed or rejected everything")
        time.sleep(2.5)                                  # past the ack timeout: nothing is sent again
    finally:
        uplink.stop()
    assert uplink.counters["confirmed"] == 51 and uplink.counters["rejected"] == 1
    assert uplink.counters["published"] == 52, "a rejected event must not be re-sent"
    rows = {r["id"]: r for r in outbox.rows("event", limit=100)}
    assert rows[bad["event_id"]]["rejected"] and all(rows[e["event_id"]]["rejected"] is None for e in good)
    with psycopg.connect(fresh_db) as conn:
        stored = {r[0] for r in conn.execute("SELECT event_id::text FROM sightings").fetchall()}
    assert stored == {e["event_id"] for e in good}

