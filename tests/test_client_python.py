"""The Python client SDK (clients/python, road-monitor-client) against the real server over HTTP: submit,
resend, refusals kept with their reason, retries with backoff on 429, and the offline queue of a phone in
a tunnel delivered in order once the server is reachable."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from fleet_server.config import ServerConfig
from tests.server_fixtures import count, make_cfg, serve_api, token

pytestmark = pytest.mark.services  # every test here runs against the local PostGIS/Mosquitto

road_monitor_client = pytest.importorskip("road_monitor_client", reason="pip install -e clients/python "
                                                                        "(make install does)")
RoadMonitorAPI, Refused = road_monitor_client.RoadMonitorAPI, road_monitor_client.Refused

__all__ = ["make_cfg"]
POTHOLE = [{"bbox": [100, 150, 250, 300], "class": "pothole", "confidence": 0.87}]


@pytest.fixture
def live(make_cfg) -> tuple[str, str, ServerConfig]:
    cfg = make_cfg(api={"rate_limit_per_hour": 5, "token_cache_s": 0})
    with serve_api(cfg) as url:
        yield url, cfg.database.resolve_dsn(), cfg


def dead_url() -> str:
    with socket.socket() as s:  # a port that nothing listens on: connection refused, like no network
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_submit_resend_and_refusals(live, tmp_path: Path) -> None:
    url, dsn, _cfg = live
    key = token(dsn, "device", "phone-1", device_id="phone-1")
    when = datetime.now(UTC) - timedelta(seconds=3)
    with RoadMonitorAPI(key, f"{url}/v1", queue_path=tmp_path / "q.db") as api:
        first = api.submit_detections("phone-1", (12.9716, 77.5946, 5.0), POTHOLE, image_bytes=None, timestamp=when)
        assert first.status == "queued" and first.event_id
        assert api.submit_detections("phone-1", (12.9716, 77.5946, 5.0), POTHOLE, timestamp=when).status == "duplicate"
        with pytest.raises(Refused) as bad:
            api.submit_detections("phone-1", (95.0, 77.5946, 5.0), POTHOLE)
        assert bad.value.status_code == 400 and "gps.lat" in str(bad.value.detail)
        assert len(api.queue) == 0 and [r[1] for r in api.queue.refused()] == [400]
    assert count(dsn, "SELECT count(*) FROM sightings WHERE device_id = 'phone-1'") == 1
    with RoadMonitorAPI("rmt_00_wrong", f"{url}/v1") as api, pytest.raises(Refused) as unauthorised:
        api.submit_detections("phone-1", (12.9, 77.5, 5.0), POTHOLE)
    assert unauthorised.value.status_code == 401


def test_a_phone_in_a_tunnel_loses_nothing(live, tmp_path: Path) -> None:
    url, dsn, _cfg = live
    key = token(dsn, "device", "phone-2", device_id="phone-2")
    queue = tmp_path / "outbox.db"
    start = datetime.now(UTC) - timedelta(minutes=1)
    with RoadMonitorAPI(key, dead_url(), queue_path=queue, max_attempts=2, backoff_s=0.01) as tunnel:
        for i in range(4):
            receipt = tunnel.submit_detections("phone-2", (48.1 + i * 1e-3, 11.5, 4.0), POTHOLE,
                                               timestamp=start + timedelta(seconds=i))
            assert receipt.status == "offline"
        assert len(tunnel.queue) == 4
    # The app restarts out of the tunnel: a new client on the same queue file sends the backlog, in order.
    with RoadMonitorAPI(key, f"{url}/v1", queue_path=queue) as api:
        assert api.flush() == {"queued": 4, "duplicate": 0, "refused": 0, "offline": 0}
        assert len(api.queue) == 0
    with httpx.Client() as http:
        rows = http.get(f"{url}/api/v1/audit", headers={"Authorization": f"Bearer {token(dsn, 'manager')}"}).json()
    assert [r["status"] for r in rows if r["who"] == "phone-2"] == [202] * 4
    order = [r[0] for r in _rows(dsn, "SELECT captured_at FROM sightings WHERE device_id = 'phone-2' "
                                      "ORDER BY received_at, captured_at")]
    assert order == sorted(order) and len(order) == 4


def test_429_is_retried_with_backoff_then_kept_for_later(live, tmp_path: Path) -> None:
    url, dsn, _cfg = live
    key = token(dsn, "device", "phone-3", device_id="phone-3")
    with RoadMonitorAPI(key, f"{url}/v1", queue_path=tmp_path / "q.db", max_attempts=3, backoff_s=0.01,
                        max_backoff_s=0.05) as api:
        for i in range(5):  # the server allows 5 an hour here
            assert api.submit_detections("phone-3", (48.2 + i * 1e-3, 11.5, 4.0), POTHOLE).status == "queued"
        assert api.submit_detections("phone-3", (48.3, 11.5, 4.0), POTHOLE).status == "offline"
        assert len(api.queue) == 1
    manager = {"Authorization": f"Bearer {token(dsn, 'manager')}"}
    with httpx.Client() as http:
        rows = http.get(f"{url}/api/v1/audit", headers=manager).json()
    assert sum(r["status"] == 429 for r in rows if r["who"] == "phone-3") == 3  # max_attempts tries, then waits


def _rows(dsn: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()
