"""The deployment guide's four API tests (its tests/test_api.py), with its bodies and URLs verbatim, against
the real server on the project-local PostGIS.

Two things differ from the guide's text, both because its `main.app` and `"Bearer test_token"` are
placeholders: `client` is our app on this test's database, and `test_token` is a real device token of
VEH_TEST (the guide's device) put where the guide writes `test_token`.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from fleet_server.api import create_app
from tests.server_fixtures import count, make_cfg, token

pytestmark = pytest.mark.services  # every test here runs against the local PostGIS/Mosquitto

__all__ = ["make_cfg"]


@pytest.fixture
def server(make_cfg):
    cfg = make_cfg()
    with TestClient(create_app(cfg)) as client:
        yield client, cfg.database.resolve_dsn()


@pytest.fixture
def client(server):
    return server[0]


@pytest.fixture
def test_token(server) -> str:
    return token(server[1], "device", "device VEH_TEST", device_id="VEH_TEST")


@pytest.fixture
def valid_detection():
    return {
        "device_id": "VEH_TEST",
        "timestamp": datetime.utcnow().isoformat() + "Z",
        "gps": {
            "lat": 12.9716,
            "lon": 77.5946,
            "accuracy": 5.0
        },
        "detections": [
            {
                "bbox": [100, 150, 250, 300],
                "class": "pothole",
                "confidence": 0.87
            }
        ]
    }


def test_submit_detection(client, valid_detection, test_token, server):
    """Test successful detection submission."""
    response = client.post(
        "/api/v1/detections",
        json=valid_detection,
        headers={"Authorization": f"Bearer {test_token}"}
    )

    assert response.status_code == 202
    assert "event_id" in response.json()
    assert response.json()["status"] == "queued"
    # Ours: it is stored, as a sighting at the phone's position that says it was not projected.
    assert count(server[1], "SELECT count(*) FROM sightings WHERE device_id = 'VEH_TEST' AND source = 'http' "
                            "AND payload->>'ground_projected' = 'false' AND size_width_m IS NULL "
                            "AND abs(ST_Y(geom::geometry) - 12.9716) < 1e-9") == 1


def test_invalid_gps(client, valid_detection, test_token, server):
    """Test invalid GPS coordinates."""
    valid_detection["gps"]["lat"] = 95.0  # Out of range

    response = client.post(
        "/api/v1/detections",
        json=valid_detection,
        headers={"Authorization": f"Bearer {test_token}"}
    )

    assert response.status_code == 400
    assert "gps.lat" in response.json()["detail"]  # ours: the refusal names the field
    assert count(server[1], "SELECT count(*) FROM sightings") == 0
    assert count(server[1], "SELECT count(*) FROM rejected WHERE source = 'http' AND reason LIKE 'gps.lat%%'") == 1


def test_missing_auth(client, valid_detection):
    """Test missing authentication."""
    response = client.post(
        "/api/v1/detections",
        json=valid_detection
    )

    assert response.status_code == 403


def test_rate_limiting(client, valid_detection, test_token, server):
    """Test rate limiting."""
    # Submit 101 requests (limit is 100/hour)
    codes = []
    for i in range(101):
        response = client.post(
            "/api/v1/detections",
            json=valid_detection,
            headers={"Authorization": f"Bearer {test_token}"}
        )
        codes.append(response.status_code)

        if i < 100:
            assert response.status_code in [202, 409]  # Success or duplicate
        else:
            assert response.status_code == 429  # Rate limited
    # Ours: the same body 100 times is one sighting (202 once, then 409), and the 429 says when to come back.
    assert codes[:100] == [202] + [409] * 99
    assert 3500 <= int(response.headers["Retry-After"]) <= 3601
    assert count(server[1], "SELECT count(*) FROM sightings") == 1
