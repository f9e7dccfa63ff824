"""Phones and other HTTP clients on the real server: the guide's body at both URLs, one sighting per detection,
resends, images, strict validation, weighting in aggregation, the OpenAPI contract, token expiry and
rotation, and the audit log."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from fleet_server import auth
from fleet_server.api import create_app
from fleet_server.phone_body import PhoneSubmission
from tests.server_fixtures import count, iso, make_cfg, make_event, offset, token

pytestmark = pytest.mark.services  # every test here runs against the local PostGIS/Mosquitto

__all__ = ["make_cfg"]

# The smallest JPEG a phone might send: start and end markers around a real (1x1, grey) image.
JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAAMCAgICAgMCAgIDAwMDBAYEBAQEBAgGBgUGCQgKCgkICQkKDA8MCgsOCwkJDRENDg8QEBEQCgwS"
    "ExIQEw8QEBD/yQALCAABAAEBAREA/8wABgAQEAX/2gAIAQEAAD8A0s8g/9k=")


@pytest.fixture
def server(make_cfg):
    cfg = make_cfg(api={"token_cache_s": 0, "max_image_bytes": 2048})
    with TestClient(create_app(cfg)) as client:
        yield client, cfg.database.resolve_dsn()


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


def body(device: str = "phone-1", lat: float = 48.1, lon: float = 11.5, **extra) -> dict:
    out = {"device_id": device, "timestamp": iso(datetime.now(UTC) - timedelta(seconds=5)),
           "gps": {"lat": lat, "lon": lon, "accuracy": 4.0},
           "detections": [{"bbox": [100, 150, 250, 300], "class": "pothole", "confidence": 0.87}]}
    out.update(extra)
    return out


def test_both_urls_one_sighting_per_detection_and_resends(server) -> None:
    client, dsn = server
    dev = bearer(token(dsn, "device", "phone-1", device_id="phone-1"))
    two = body(detections=[{"bbox": [1, 2, 30, 40], "class": "pothole", "confidence": 0.9},
                           {"bbox": [50, 60, 90, 99], "class": "crack", "confidence": 0.6}])
    first = client.post("/v1/detections", json=two, headers=dev)
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "queued" and len(first.json()["event_ids"]) == 2
    assert count(dsn, "SELECT count(*) FROM sightings WHERE source = 'http'") == 2
    assert count(dsn, "SELECT count(DISTINCT payload->>'submission_id') FROM sightings") == 1
    # The same submission again, keys in another order, at the other URL: same ids, nothing doubled.
    shuffled = json.loads(json.dumps(dict(reversed(list(two.items())))))
    again = client.post("/api/v1/detections", json=shuffled, headers=dev)
    assert again.status_code == 409
    assert count(dsn, "SELECT count(*) FROM sightings") == 2
    # A different submission (other time) is new.
    later = dict(two, timestamp=iso(datetime.now(UTC)))
    assert client.post("/v1/detections", json=later, headers=dev).json()["event_id"] != first.json()["event_id"]
    assert count(dsn, "SELECT count(*) FROM sightings") == 4


def test_a_body_without_device_id_is_the_tokens_device(server) -> None:
    """The 400 for another device's id says "or leave device_id out": a body that does is the token's."""
    client, dsn = server
    dev = bearer(token(dsn, "device", "phone-5", device_id="phone-5"))
    named = body("phone-5")
    anonymous = {k: v for k, v in named.items() if k != "device_id"}
    ok = client.post("/v1/detections", json=anonymous, headers=dev)
    assert ok.status_code == 202, ok.text
    assert count(dsn, "SELECT count(*) FROM sightings WHERE device_id = 'phone-5'") == 1
    assert client.post("/v1/detections", json=named, headers=dev).status_code == 409  # the same submission


def test_image_becomes_the_thumbnail_and_bad_images_are_refused(server) -> None:
    client, dsn = server
    dev = bearer(token(dsn, "device", "phone-2", device_id="phone-2"))
    ok = client.post("/v1/detections", json=body("phone-2", image_base64=base64.b64encode(JPEG).decode()),
                     headers=dev)
    assert ok.status_code == 202, ok.text
    viewer = bearer(token(dsn, "viewer"))
    thumb = client.get(f"/api/v1/sightings/{ok.json()['event_ids'][0]}/thumbnail.jpg", headers=viewer)
    assert thumb.status_code == 200 and thumb.content == JPEG
    cases = {"image_base64: not base64": "not base64!",
             "image_base64: not an image": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 64).decode(),
             "image_base64: larger than 2048 bytes": base64.b64encode(JPEG[:-2] + b"0" * 4096 + JPEG[-2:]).decode()}
    for reason, image in cases.items():
        refused = client.post("/v1/detections", json=body("phone-2", lat=48.2, image_base64=image), headers=dev)
        assert refused.status_code == 400 and refused.json()["detail"].startswith(reason), refused.text
    assert count(dsn, "SELECT count(*) FROM sightings") == 1


def test_a_camera_photo_is_kept_as_a_thumbnail(make_cfg) -> None:
    """The guide's SDKs send the camera's photo as it is: the detections are taken, the photo kept small."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 255, (300, 400, 3), np.uint8), (4032, 3024), interpolation=cv2.INTER_CUBIC)
    jpeg = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    png = cv2.imencode(".png", photo[:800, :1200])[1].tobytes()
    assert len(jpeg) > 1_000_000  # a 12 MP phone photo
    cfg = make_cfg(api={"token_cache_s": 0})
    with TestClient(create_app(cfg)) as client:
        dsn = cfg.database.resolve_dsn()
        dev = bearer(token(dsn, "device", "phone-3", device_id="phone-3"))
        viewer = bearer(token(dsn, "viewer"))
        for image, lat in ((jpeg, 48.3), (png, 48.4)):
            ok = client.post("/v1/detections", headers=dev,
                             json=body("phone-3", lat=lat, image_base64=base64.b64encode(image).decode()))
            assert ok.status_code == 202, ok.text
            thumb = client.get(f"/api/v1/sightings/{ok.json()['event_ids'][0]}/thumbnail.jpg", headers=viewer)
            small = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR)
            assert thumb.content[:3] == b"\xff\xd8\xff" and max(small.shape[:2]) == 640
            assert len(thumb.content) < 200_000  # fits the event schema's thumbnail


@pytest.mark.parametrize(("change", "field"), [
    ({"gps": {"lat": 48.1, "lon": 11.5}}, "gps.accuracy"),
    ({"gps": {"lat": 48.1, "lon": 190, "accuracy": 3}}, "gps.lon"),
    ({"gps": {"lat": 0, "lon": 0, "accuracy": 3}}, "gps"),
    ({"gps": {"lat": "48.1", "lon": 11.5, "accuracy": 3}}, "gps.lat"),  # numbers are JSON numbers
    ({"gps": {"lat": 48.1, "lon": 11.5, "accuracy": True}}, "gps.accuracy"),
    ({"timestamp": 1764337532}, "timestamp"),  # ISO 8601 text, as the guide's clients send
    ({"timestamp": "1764337532"}, "timestamp"),  # not Unix seconds as text either
    ({"timestamp": "2026-11-28T13:45:32"}, "timestamp"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"timestamp": "2001-01-01T00:00:00Z"}, "timestamp"),
    ({"detections": []}, "detections"),
    ({"detections": [{"bbox": [250, 150, 100, 300], "class": "pothole", "confidence": 0.8}]}, "detections.0.bbox"),
    ({"detections": [{"bbox": [1, 2, 3], "class": "pothole", "confidence": 0.8}]}, "detections.0.bbox"),
    ({"detections": [{"bbox": [1, 2, 3, 4], "class": "pothole", "confidence": 1.5}]}, "detections.0.confidence"),
    ({"detections": [{"bbox": [1, 2, 3, 4], "confidence": 0.5}]}, "detections.0.class"),
    ({"detections": [{"bbox": [1, 2, 3, 4], "class": "pot\u0000hole", "confidence": 0.5}]}, "detections.0.class"),
    ({"detections": [{"bbox": [1, 2, 3, 4], "class": "\U0001f418", "confidence": 0.5}]}, "detections.0.class"),
    ({"detections": [{"bbox": [1, 2, 3, 4], "class": "=cmd|' /C calc'!A0", "confidence": 0.5}]},
     "detections.0.class"),
    ({"timestamp": "0001-01-01T00:00:00+14:00"}, "timestamp"),  # before the year 1 in UTC: was a 500
    ({"timestamp": "9999-12-31T23:59:59-14:00"}, "timestamp"),
    ({"speed": 12}, "speed"),
])
def test_every_refusal_is_a_400_naming_the_field(server, change: dict, field: str) -> None:
    client, dsn = server
    dev = bearer(token(dsn, "device", "phone-3", device_id="phone-3"))
    r = client.post("/v1/detections", json=body("phone-3", **change), headers=dev)
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith(field), r.json()
    assert count(dsn, "SELECT count(*) FROM sightings") == 0


def test_times_in_any_rfc_3339_spelling_are_taken(server) -> None:
    client, dsn = server
    dev = bearer(token(dsn, "device", "phone-t", device_id="phone-t"))
    lower = iso(datetime.now(UTC) - timedelta(seconds=5)).lower()  # "2026-12-05t06:50:31.120z": RFC 3339 too
    r = client.post("/api/v1/detections", json=body("phone-t", timestamp=lower), headers=dev)
    assert r.status_code == 202, r.text
    # A leap second (the schema takes one at 23:59 UTC) in a roadmon.event/1 body was a 500: Python's datetime
    # has no second 60. It is the next minute's first, as PostgreSQL stores it.
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    leap = (midnight - timedelta(days=1)).strftime("%Y-%m-%dT23:59:60.000Z")
    event = make_event("phone-t", 48.2, 11.5, captured_at=leap)
    r = client.post("/api/v1/detections", json=event, headers=dev)
    assert r.status_code == 202, r.text
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT captured_at FROM sightings WHERE event_id = %s", (event["event_id"],)).fetchone()
    assert stored[0] == midnight


def test_classes_are_folded_into_one_defect_and_odd_ones_refused(server) -> None:
    client, dsn = server
    dev = bearer(token(dsn, "device", "phone-c", device_id="phone-c"))
    for name in ("Pothole", " pothole ", "POTHOLE"):
        sent = body("phone-c", detections=[{"bbox": [1, 2, 30, 40], "class": name, "confidence": 0.8}])
        assert client.post("/v1/detections", json=sent, headers=dev).status_code == 202
    assert count(dsn, "SELECT count(*) FROM defects") == 1
    assert count(dsn, "SELECT count(*) FROM defects WHERE class = 'pothole' AND sighting_count = 3") == 1
    # A vehicle's own event too: the sighting's class is folded, its payload keeps what the device sent.
    event = make_event("phone-c", 48.1, 11.5, cls="Pothole")
    assert client.post("/api/v1/detections", json=event, headers=dev).status_code == 202
    assert count(dsn, "SELECT count(*) FROM sightings WHERE payload->>'class' = 'Pothole' AND class = 'pothole'") == 1
    assert count(dsn, "SELECT count(*) FROM defects") == 1
    viewer = bearer(token(dsn, "viewer"))
    assert len(client.get("/api/v1/defects", params={"class": "Pothole"}, headers=viewer).json()["features"]) == 1
    r = client.post("/api/v1/detections", json=make_event("phone-c", 48.1, 11.5, cls="@SUM(1)"), headers=dev)
    assert r.status_code == 400 and r.json()["detail"].startswith("class: "), r.text


def test_other_devices_ids_are_400_and_user_tokens_403(server) -> None:
    client, dsn = server
    dev = bearer(token(dsn, "device", "phone-4", device_id="phone-4"))
    # The body's fault, not the token's: a client sets that body aside and goes on (docs/clients.md).
    assert client.post("/v1/detections", json=body("phone-5"), headers=dev).status_code == 400
    assert client.post("/v1/detections", json=body("phone-4"), headers=bearer(token(dsn, "admin"))).status_code == 403
    assert client.post("/v1/detections", json=body("phone-4"), headers=bearer("rmt_00_forged")).status_code == 401


def test_a_phone_sighting_weighs_less_than_a_projected_one(server) -> None:
    client, dsn = server
    vehicle = make_event("veh-1", 48.1, 11.5, h=1.0, severity=0.6)
    assert client.post("/api/v1/detections", json=vehicle,
                       headers=bearer(token(dsn, "device", "veh-1", device_id="veh-1"))).status_code == 202
    lat, lon = offset(48.1, 11.5, 8.0, 0.0)  # the phone stood 8 m short of the pothole
    phone = body("phone-6", lat=lat, lon=lon)
    assert client.post("/v1/detections", json=phone,
                       headers=bearer(token(dsn, "device", "phone-6", device_id="phone-6"))).status_code == 202
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT sighting_count, ST_Distance(geom, ST_MakePoint(11.5, 48.1)::geography), "
                           "severity FROM defects").fetchall()
    assert len(row) == 1 and row[0][0] == 2  # one pothole, both sightings
    # Weighted by 1/h^2 with h 1 m against hypot(4, 10) m: the phone moves it ~8 m / 117, not half-way.
    assert row[0][1] < 0.2
    assert row[0][2] == pytest.approx(0.6)  # the phone has no size: the vehicle's severity stands


def test_openapi_publishes_the_guides_contract(server) -> None:
    client, _dsn = server
    doc = client.get("/openapi.json").json()
    for path in ("/api/v1/detections", "/v1/detections"):
        post = doc["paths"][path]["post"]
        content = post["requestBody"]["content"]["application/json"]
        example = content["examples"]["guide"]["value"]
        # Without the guide's own device id, which every real token refuses (an integrator's finding).
        assert set(example) == {"timestamp", "gps", "detections"}
        PhoneSubmission.model_validate({**example, "device_id": "any"})  # the server fills it in from the token
        phone_schema = content["schema"]["oneOf"][0]
        assert "$defs" not in json.dumps(phone_schema)
        assert phone_schema["properties"]["gps"]["properties"]["lat"]["maximum"] == 90
        assert phone_schema["additionalProperties"] is False
        assert post["responses"]["202"]["content"]["application/json"]["example"]["status"] == "queued"
        assert {"400", "401", "403", "409", "429"} <= set(post["responses"])


def test_openapi_says_what_the_server_answers(server) -> None:
    client, _dsn = server
    doc = client.get("/openapi.json").json()
    operations = [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]
    assert not [(path, method) for path, method, op in operations if "422" in op["responses"]]
    problem = {"$ref": "#/components/schemas/Problem"}
    for path in ("/api/v1/defects", "/api/v1/coverage", "/api/v1/detections"):
        method = "post" if path.endswith("detections") else "get"
        assert doc["paths"][path][method]["responses"]["400"]["content"]["application/json"]["schema"] == problem
    assert doc["components"]["schemas"]["Problem"]["required"] == ["detail"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert {"200", "503"} <= set(doc["paths"]["/health"]["get"]["responses"])
    # Downloads say their own media type (a generated client parsed the CSV as JSON); token routes say 401/403,
    # routes of one item 404.
    paths = doc["paths"]
    assert set(paths["/api/v1/defects.csv"]["get"]["responses"]["200"]["content"]) == {"text/csv"}
    assert set(paths["/api/v1/defects.geojson"]["get"]["responses"]["200"]["content"]) == {"application/geo+json"}
    thumbnail = paths["/api/v1/sightings/{event_id}/thumbnail.jpg"]["get"]["responses"]
    assert set(thumbnail["200"]["content"]) == {"image/jpeg"}
    assert {"401", "403", "404"} <= set(thumbnail) and {"401", "403", "404"} <= set(
        paths["/api/v1/defects/{defect_id}"]["patch"]["responses"])
    assert {"401", "403"} <= set(paths["/api/v1/defects"]["get"]["responses"])
    assert "404" not in paths["/api/v1/defects"]["get"]["responses"]
    # What the document promises is what a malformed parameter gets.
    r = client.get("/api/v1/defects", params={"limit": "many"}, headers=bearer(token(_dsn, "viewer")))
    assert r.status_code == 400 and isinstance(r.json()["detail"], list)


def test_tokens_expire_and_rotate_with_an_overlap(server) -> None:
    client, dsn = server
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id) VALUES ('phone-7')")
        old = auth.create_token(conn, "device", "device phone-7", "phone-7", expires_in=timedelta(days=90))
        old_id = conn.execute("SELECT max(id) FROM api_tokens").fetchone()[0]
        expired = auth.create_token(conn, "viewer", "gone", expires_in=timedelta(seconds=-1))
        new, new_id = auth.rotate_token(conn, old_id, timedelta(hours=1), timedelta(days=90))
    assert client.get("/api/v1/me", headers=bearer(expired)).status_code == 401
    # During the overlap both work, for the same device.
    assert client.get("/api/v1/me", headers=bearer(old)).json()["device_id"] == "phone-7"
    assert client.get("/api/v1/me", headers=bearer(new)).json()["device_id"] == "phone-7"
    with psycopg.connect(dsn, autocommit=True) as conn:
        newer, _ = auth.rotate_token(conn, new_id, timedelta(0), timedelta(days=90))
        with pytest.raises(LookupError):
            auth.rotate_token(conn, new_id, timedelta(0), timedelta(days=90))  # already expired
    assert client.get("/api/v1/me", headers=bearer(new)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(newer)).status_code == 200


def test_audit_log_records_every_call_with_a_token(server) -> None:
    client, dsn = server
    dev = bearer(token(dsn, "device", "device phone-8", device_id="phone-8"))
    assert client.post("/v1/detections", json=body("phone-8"), headers=dev).status_code == 202
    assert client.post("/v1/detections", json=body("phone-8", gps={}), headers=dev).status_code == 400
    assert client.get("/api/v1/me", headers=bearer("rmt_00_forged")).status_code == 401
    assert client.get("/api/v1/audit", headers=bearer(token(dsn, "viewer", "v"))).status_code == 403
    # Which tracks a call read is in its query: the path alone could not say (a data-protection review).
    tracks = client.get("/api/v1/coverage", params={"since": "2000-01-01T00:00:00Z"},
                        headers=bearer(token(dsn, "viewer", "w")))
    assert tracks.status_code == 200
    rows = client.get("/api/v1/audit", headers=bearer(token(dsn, "manager", "boss"))).json()
    seen = {(r["who"], r["method"], r["path"], r["status"]) for r in rows}
    assert {("device phone-8", "POST", "/v1/detections", 202), ("device phone-8", "POST", "/v1/detections", 400),
            ("invalid token", "GET", "/api/v1/me", 401), ("v", "GET", "/api/v1/audit", 403),
            ("w", "GET", "/api/v1/coverage?since=2000-01-01T00%3A00%3A00Z", 200)} <= seen
    assert all(r["at"] and r["client"] for r in rows)
    assert client.get("/api/v1/audit", params={"who": "nobody"},
                      headers=bearer(token(dsn, "manager", "boss2"))).json() == []


def test_concurrent_posts_share_commits_without_doubling_or_passing_the_limit(make_cfg) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.server_fixtures import serve_api

    cfg = make_cfg(api={"rate_limit_per_hour": 5})
    dsn = cfg.database.resolve_dsn()
    same = bearer(token(dsn, "device", "phone-9", device_id="phone-9"))
    many = bearer(token(dsn, "device", "phone-10", device_id="phone-10"))
    one_body = body("phone-9")
    bodies = [body("phone-10", lat=48.1 + i * 1e-3) for i in range(12)]
    with serve_api(cfg) as url, httpx.Client(timeout=30) as http, ThreadPoolExecutor(12) as pool:
        repeats = list(pool.map(lambda _: http.post(f"{url}/v1/detections", json=one_body, headers=same), range(5)))
        distinct = list(pool.map(lambda b: http.post(f"{url}/v1/detections", json=b, headers=many), bodies))
    # The same body five times at once: stored once; one 202, the rest 409 with the same id.
    assert sorted(r.status_code for r in repeats) == [202, 409, 409, 409, 409]
    assert len({r.json()["event_id"] for r in repeats}) == 1
    assert count(dsn, "SELECT count(*) FROM sightings WHERE device_id = 'phone-9'") == 1
    # Twelve at once against a budget of five (the 409s above were phone-9's, its own budget).
    assert sorted(r.status_code for r in distinct) == [202] * 5 + [429] * 7
    assert count(dsn, "SELECT count(*) FROM sightings WHERE device_id = 'phone-10'") == 5


def test_a_body_postgresql_refuses_fails_alone_in_a_shared_commit(make_cfg) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.server_fixtures import serve_api

    cfg = make_cfg()
    dsn = cfg.database.resolve_dsn()
    dev = bearer(token(dsn, "device", "veh-11", device_id="veh-11"))
    # A body only the database refuses (the decoder and the schema catch everything else, a NUL included): a
    # constraint of this test's database stands for whatever PostgreSQL may one day say no to.
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE sightings ADD CONSTRAINT refuse_for_test CHECK (class <> 'refuse-me')")
    events = [make_event("veh-11", 48.1 + i * 1e-3, 11.5, cls="refuse-me" if i == 7 else "pothole")
              for i in range(16)]
    with serve_api(cfg) as url, httpx.Client(timeout=30) as http, ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda e: http.post(f"{url}/api/v1/detections", json=e, headers=dev).status_code,
                              events))
    assert codes == [202] * 7 + [400] + [202] * 8
    assert count(dsn, "SELECT count(*) FROM sightings WHERE device_id = 'veh-11'") == 15
    assert count(dsn, "SELECT count(*) FROM rejected WHERE reason LIKE 'database refused%%'") == 1


def test_a_phone_dating_its_sightings_hours_ahead_is_a_device_problem(server) -> None:
    """A Sydney phone posting local time labelled Z (11 h ahead) was taken without a word anywhere: `device ls`,
    the devices API and the dashboard showed no problem while its sightings sat in the future on the map."""
    client, dsn = server
    dev = bearer(token(dsn, "device", "phone-syd", device_id="phone-syd"))
    manager = bearer(token(dsn, "manager"))
    assert client.post("/api/v1/detections", json=body("phone-syd"), headers=dev).status_code == 202
    assert client.get("/api/v1/devices/phone-syd", headers=manager).json()["problems"] == []
    ahead = iso(datetime.now(UTC) + timedelta(hours=11))
    assert client.post("/api/v1/detections", json=body("phone-syd", lat=48.2, timestamp=ahead),
                       headers=dev).status_code == 202
    device = client.get("/api/v1/devices/phone-syd", headers=manager).json()
    assert device["problem_codes"] == ["clock"], device
    assert "11.0 h" in device["problems"][0] and "time zone" in device["problems"][0]
