"""HTTP API on a real PostGIS: status codes of POST /detections, auth and roles, filters (with injection
strings), defect detail, workflow, exports, devices, coverage, metrics."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

from fleet_server.api import create_app
from fleet_server.config import ServerConfig
from roadmon_contract.geodesy import distance_m
from tests.server_fixtures import TINY_JPEG_B64, count, make_cfg, make_event, offset, token

__all__ = ["make_cfg"]


@pytest.fixture
def api(make_cfg) -> tuple[TestClient, ServerConfig, str]:
    cfg = make_cfg(api={"rate_limit_per_hour": 100, "cors_origins": ["https://fleet.example.org"]})
    client = TestClient(create_app(cfg))
    yield client, cfg, cfg.database.resolve_dsn()
    client.app.state.pool.close()


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


@pytest.mark.services
def test_a_token_read_before_a_restore_into_the_same_cluster_is_gone(fresh_db: str, postgres) -> None:
    # The documented pg_dump restored into the same PostgreSQL: its cluster and timeline stay, transaction ids go
    # on counting, so a copy's token read before the restore was taken and answered "nothing changed" while the
    # copy kept defects the restore had removed. The restore creates the tables anew: the token names them.
    import subprocess

    from fastapi import HTTPException

    from fleet_server.api_deps import sync_point
    from fleet_server.migrate import migrate

    migrate(fresh_db)
    dump = subprocess.run([str(postgres.bindir / "pg_dump"), "-Fc", fresh_db], capture_output=True, check=True).stdout
    with psycopg.connect(fresh_db) as conn:
        token, _ = sync_point(conn, None)
        assert sync_point(conn, token)[1] == token.rsplit(".", 1)[1]  # the same history: changes since it
    restored = postgres.create_database(fresh_db.rsplit("/", 1)[1] + "_restored")
    # Errors about the PostGIS extension only (it exists in the new database, owned by the cluster's superuser).
    subprocess.run([str(postgres.bindir / "pg_restore"), "--no-owner", "-d", restored], input=dump,
                   capture_output=True)
    assert count(restored, "SELECT count(*) FROM schema_version") == count(fresh_db, "SELECT count(*) FROM "
                                                                              "schema_version") > 10
    with psycopg.connect(restored) as conn, pytest.raises(HTTPException) as gone:
        sync_point(conn, token)
    assert gone.value.status_code == 410


@pytest.mark.services
def test_detection_status_codes(api) -> None:
    client, _cfg, dsn = api
    dev = bearer(token(dsn, "device", "phone-1", device_id="phone-1"))
    event = make_event("phone-1", 48.1, 11.5)
    ok = client.post("/api/v1/detections", json=event, headers=dev)
    assert ok.status_code == 202
    assert ok.json() == {"event_id": event["event_id"], "status": "queued", "event_ids": [event["event_id"]]}
    assert count(dsn, "SELECT count(*) FROM sightings WHERE source = 'http'") == 1
    assert client.post("/api/v1/detections", json=event, headers=dev).status_code == 409
    assert client.post("/api/v1/detections", json=make_event("phone-1", 95, 11.5), headers=dev).status_code == 400
    assert client.post("/api/v1/detections", content=b"{nope", headers=dev).status_code == 400
    nul = make_event("phone-1", 48.1, 11.5, cls="pot\u0000hole")
    assert client.post("/api/v1/detections", json=nul, headers=dev).status_code == 400
    assert client.post("/api/v1/detections", json=event).status_code == 403  # no credentials (the guide's test)
    assert client.post("/api/v1/detections", json=event, headers=bearer("rmt_0000_forged")).status_code == 401
    # Another device's id in the body: the body is wrong, not the token (a 403 held a phone's queue behind it).
    other = client.post("/api/v1/detections", json=make_event("phone-2", 48.1, 11.5), headers=dev)
    assert other.status_code == 400, other.text
    assert other.json()["detail"].startswith("device_id: this token belongs to device 'phone-1'"), other.text
    viewer = bearer(token(dsn, "viewer"))
    assert client.post("/api/v1/detections", json=make_event("phone-1", 48.1, 11.5), headers=viewer).status_code == 403
    # A phone may leave out the ids; the server fills them in.
    minimal = {k: v for k, v in make_event("phone-1", 48.2, 11.5).items()
               if k not in ("schema", "event_id", "device_id", "seq")}
    assert client.post("/api/v1/detections", json=minimal, headers=dev).status_code == 202
    assert count(dsn, "SELECT count(*) FROM rejected WHERE source = 'http'") >= 2
    metrics = client.get("/metrics").text
    assert 'road_detection_submissions_total{code="202",status="queued"}' in metrics
    assert 'road_detection_submissions_total{code="409",status="duplicate"}' in metrics
    assert 'road_detection_submissions_total{code="400",status="failed"}' in metrics


@pytest.mark.services
def test_rate_limit_429_on_the_101st(api) -> None:
    client, _cfg, dsn = api
    dev = bearer(token(dsn, "device", "phone-9", device_id="phone-9"))
    codes = [client.post("/api/v1/detections", json=make_event("phone-9", 48.1, 11.5 + i * 1e-3), headers=dev)
             .status_code for i in range(101)]
    assert codes[:100] == [202] * 100
    assert codes[100] == 429
    # Another device has its own budget.
    dev2 = bearer(token(dsn, "device", "phone-10", device_id="phone-10"))
    assert client.post("/api/v1/detections", json=make_event("phone-10", 48.1, 11.5), headers=dev2).status_code == 202


def _seed(client: TestClient, dsn: str) -> dict:
    dev = bearer(token(dsn, "device", "veh-a", device_id="veh-a"))
    for i, (lat, lon) in enumerate([(48.1, 11.5), (48.2, 11.6), (48.3, 11.7)]):
        r = client.post("/api/v1/detections", json=make_event("veh-a", lat, lon, severity=0.2 + 0.3 * i,
                                                              thumbnail_jpeg_b64=TINY_JPEG_B64), headers=dev)
        assert r.status_code == 202
    return dev


@pytest.mark.services
def test_me_roles_and_defect_listing(api) -> None:
    client, _cfg, dsn = api
    _seed(client, dsn)
    viewer = bearer(token(dsn, "viewer", "vera"))
    assert client.get("/api/v1/me", headers=viewer).json()["role"] == "viewer"
    assert client.get("/api/v1/defects").status_code == 403
    fc = client.get("/api/v1/defects", headers=viewer).json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3
    lon, lat = fc["features"][0]["geometry"]["coordinates"]
    assert (round(lat, 6), round(lon, 6)) == (48.1, 11.5)
    box = client.get("/api/v1/defects", params={"bbox": "11.45,48.05,11.55,48.15"}, headers=viewer).json()
    assert len(box["features"]) == 1
    sev = client.get("/api/v1/defects", params={"min_severity": 0.6}, headers=viewer).json()
    assert len(sev["features"]) == 1
    page = client.get("/api/v1/defects", params={"limit": 2}, headers=viewer).json()
    assert len(page["features"]) == 2 and page["next_cursor"] is not None
    rest = client.get("/api/v1/defects", params={"limit": 2, "cursor": page["next_cursor"]}, headers=viewer).json()
    assert len(rest["features"]) == 1 and rest["next_cursor"] is None
    assert client.get("/api/v1/defects", params={"status": "new"}, headers=viewer).json()["features"]
    assert not client.get("/api/v1/defects", params={"class": "crack"}, headers=viewer).json()["features"]
    # The dashboard's "open" filter and date range, as the exports take them.
    assert len(client.get("/api/v1/defects", params={"status": "open"}, headers=viewer).json()["features"]) == 3
    assert not client.get("/api/v1/defects", params={"status": "repaired,dismissed"}, headers=viewer).json()["features"]
    past = "2020-01-01T00:00:00Z"
    assert not client.get("/api/v1/defects.csv", params={"until": past}, headers=viewer).text.strip().count("\n")
    assert len(client.get("/api/v1/defects.geojson", params={"until": "2999-01-01T00:00:00Z"},
                          headers=viewer).json()["features"]) == 3
    # A bare date as `until` is the whole of that day (it was read as its midnight: since=D&until=D gave nothing).
    day = fc["features"][0]["properties"]["first_seen"][:10]
    assert len(client.get("/api/v1/defects", params={"since": day, "until": day}, headers=viewer)
               .json()["features"]) == 3
    assert client.get("/api/v1/defects.csv", params={"until": "2020-01-01"}, headers=viewer).text.count("\n") == 1
    # A '+' offset typed into a URL arrives as a space: east-of-UTC managers got "unexpected extra characters".
    # Nine hours ahead of the first sighting is the same instant, nine hours later than since={first}+00:00.
    first = fc["features"][0]["properties"]["first_seen"][:19]
    for query in (f"since={first}+09:00", f"since={first}%2B09:00", f"until={first}+14:00"):
        r = client.get(f"/api/v1/defects?{query}", headers=viewer)
        assert r.status_code == 200, (query, r.text)
    late = client.get(f"/api/v1/defects?since={first}-09:00", headers=viewer).json()["features"]
    early = client.get(f"/api/v1/defects?since={first}+09:00", headers=viewer).json()["features"]
    assert len(early) == 3 and not late
    # An empty class or status (a form's "all") is no filter that matches nothing: it is refused, saying so.
    for param in ("class", "status"):
        for path in ("/api/v1/defects", "/api/v1/defects.csv"):
            for empty in ("", " ", ","):
                r = client.get(path, params={param: empty}, headers=viewer)
                assert r.status_code == 400 and "leave the parameter out" in r.json()["detail"], (param, empty)
    # Coordinates are given to 7 decimals (~1 cm), not with float noise.
    dev = bearer(token(dsn, "device", "veh-b", device_id="veh-b"))
    assert client.post("/api/v1/detections", json=make_event("veh-b", 47.123456789123, 9.987654321987),
                       headers=dev).status_code == 202
    far = client.get("/api/v1/defects", params={"bbox": "9.9,47.1,10,47.2"}, headers=viewer).json()["features"]
    assert far[0]["geometry"]["coordinates"] == [9.9876543, 47.1234568]
    with psycopg.connect(dsn, autocommit=True) as conn:  # as a recompute leaves it
        conn.execute("UPDATE defects SET h_accuracy_m = 2.1433501, size_width_m = 0.4029999 WHERE id = %s",
                     (far[0]["id"],))
    props = client.get(f"/api/v1/defects/{far[0]['id']}", headers=viewer).json()["properties"]
    assert (props["h_accuracy_m"], props["size_width_m"]) == (2.14, 0.4)  # metres to the cm


INJECTIONS = ["'; DROP TABLE defects; --", "1 OR 1=1", "pothole' OR '1'='1", "1); DELETE FROM sightings; --",
              "new,confirmed') OR 1=1 --", "\\x00", "%' UNION SELECT token_hash FROM api_tokens --"]


@pytest.mark.services
def test_sql_injection_strings_in_every_filter(api) -> None:
    client, _cfg, dsn = api
    _seed(client, dsn)
    viewer = bearer(token(dsn, "viewer"))
    whole_csv = list(csv.DictReader(io.StringIO(client.get("/api/v1/defects.csv", headers=viewer).text)))
    whole_geojson = client.get("/api/v1/defects.geojson", headers=viewer).json()["features"]
    assert len(whole_csv) == len(whole_geojson) == 3
    for text in INJECTIONS:
        for param in ("bbox", "class", "status", "since", "until", "min_severity", "cursor", "limit"):
            for path in ("/api/v1/defects", "/api/v1/defects.csv", "/api/v1/defects.geojson"):
                r = client.get(path, params={param: text}, headers=viewer)
                assert r.status_code in (200, 400), (path, param, text, r.status_code)
                if r.status_code != 200:
                    continue
                # A filter that cannot match leaves an empty answer in every format: no row leaked. The
                # exports have no pages: they ignore cursor and limit and give the whole, unchanged export.
                ignored = path != "/api/v1/defects" and param in ("cursor", "limit")
                if path.endswith(".csv"):
                    rows = list(csv.DictReader(io.StringIO(r.text)))
                    assert rows == (whole_csv if ignored else []), (param, text)
                    assert r.text.splitlines()[0].startswith("id,"), r.text[:200]
                else:
                    features = r.json()["features"]
                    assert features == (whole_geojson if ignored else []), (path, param, text)
        for param in ("since", "until", "bbox", "device"):
            r = client.get("/api/v1/coverage", params={param: text}, headers=viewer)
            assert r.status_code in (200, 400)
        assert client.get(f"/api/v1/defects/{text}", headers=viewer).status_code in (400, 404)
        assert client.get(f"/api/v1/sightings/{text}/thumbnail.jpg", headers=viewer).status_code in (400, 404)
    assert count(dsn, "SELECT count(*) FROM defects") == 3
    assert count(dsn, "SELECT count(*) FROM sightings") == 3


@pytest.mark.services
def test_defect_detail_workflow_and_exports(api) -> None:
    client, _cfg, dsn = api
    _seed(client, dsn)
    viewer = bearer(token(dsn, "viewer", "vera"))
    manager = bearer(token(dsn, "manager", "maria"))
    first = client.get("/api/v1/defects", headers=viewer).json()["features"][0]
    detail = client.get(f"/api/v1/defects/{first['id']}", headers=viewer).json()
    assert len(detail["sightings"]) == 1 and detail["vehicles"][0]["device_id"] == "veh-a"
    thumb = client.get(detail["sightings"][0]["thumbnail_url"], headers=viewer)
    assert thumb.status_code == 200 and thumb.content.startswith(b"\xff\xd8")
    change = {"status": "scheduled", "note": "crew on Monday"}
    assert client.patch(f"/api/v1/defects/{first['id']}", json=change, headers=viewer).status_code == 403
    assert client.patch(f"/api/v1/defects/{first['id']}", json={"status": "gone"}, headers=manager).status_code == 400
    assert client.patch("/api/v1/defects/999999", json=change, headers=manager).status_code == 404
    # curl -d without -H 'Content-Type: application/json': the answer says what to send.
    bare = client.patch(f"/api/v1/defects/{first['id']}", content=b'{"status": "scheduled"}',
                        headers={**manager, "Content-Type": "application/x-www-form-urlencoded"})
    assert bare.status_code == 400 and "Content-Type: application/json" in bare.json()["detail"][0], bare.text
    done = client.patch(f"/api/v1/defects/{first['id']}", json=change, headers=manager)
    assert done.status_code == 200 and done.json()["properties"]["status"] == "scheduled"
    history = client.get(f"/api/v1/defects/{first['id']}", headers=viewer).json()["history"]
    assert history[-1]["actor"] == "maria" and history[-1]["note"] == "crew on Monday"
    assert history[-1]["from_status"] == "new" and history[-1]["to_status"] == "scheduled"
    # The same status again without a note changes nothing (no history row, no new status time).
    again = client.patch(f"/api/v1/defects/{first['id']}", json={"status": "scheduled"}, headers=manager)
    assert again.status_code == 200 and again.json()["properties"]["status_changed_at"] == \
        done.json()["properties"]["status_changed_at"]
    assert len(client.get(f"/api/v1/defects/{first['id']}", headers=viewer).json()["history"]) == len(history)
    # A note on the same status is history and the work order's note, not a status change.
    moved = client.patch(f"/api/v1/defects/{first['id']}", headers=manager,
                         json={"status": "scheduled", "note": '=moved to Thursday, "urgent"\nask Müller'})
    assert moved.json()["properties"]["status_changed_at"] == done.json()["properties"]["status_changed_at"]
    assert moved.json()["properties"]["note"] == '=moved to Thursday, "urgent"\nask Müller'
    rows = list(csv.DictReader(io.StringIO(client.get("/api/v1/defects.csv", headers=viewer).text)))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"new", "scheduled"}
    notes = {r["id"]: r["note"] for r in rows}
    assert notes.pop(str(first["id"])) == '\'=moved to Thursday, "urgent"\nask Müller'  # neutralised, kept whole
    assert set(notes.values()) == {""}
    gj = client.get("/api/v1/defects.geojson", params={"status": "scheduled"}, headers=viewer).json()
    assert [f["id"] for f in gj["features"]] == [first["id"]]
    assert gj["features"][0]["properties"]["note"].startswith("=moved to Thursday")


@pytest.mark.services
def test_since_token_answers_what_was_written_since_and_what_left(api) -> None:
    """A dashboard with a city's defects open fetched every one of them every 30 s (~50 MB a tab at 100,000):
    `since_token` answers only the defects written since an earlier answer, whichever way (a manager, a recount,
    a merge), and in `removed` the ids merged away or no longer matching the filters; a write that changes
    nothing is not a change. Tokens are transaction ids, not times: a write that waited on a lock past any margin
    is still seen (an outside test held a row for 90 s and the copy never heard of the write)."""
    import threading

    from fleet_server.aggregate import merge_neighbours

    client, cfg, dsn = api
    dev = bearer(token(dsn, "device", "veh-a", device_id="veh-a"))
    base = (48.1, 11.5)
    for i, north in enumerate((0.0, 7.0, 500.0)):  # precise: 7 m apart are two defects until they settle
        # A minute apart: two passes (one view's two sightings 7 m apart would be two potholes for good).
        event = make_event("veh-a", *offset(*base, north, 0.0), h=0.5, seq=i,
                           at=datetime.now(UTC) - timedelta(minutes=3 - i))
        assert client.post("/api/v1/detections", json=event, headers=dev).status_code == 202
    viewer = bearer(token(dsn, "viewer", "vera"))
    manager = bearer(token(dsn, "manager", "maria"))
    full = client.get("/api/v1/defects", headers=viewer).json()
    first, second, far = (f["id"] for f in full["features"])

    def changes(since: str, **filters: str) -> tuple[list[int], list[int]]:
        answer = client.get("/api/v1/defects", params={"since_token": since, **filters}, headers=viewer).json()
        return [f["id"] for f in answer["features"]], answer["removed"]

    def latest() -> str:
        return client.get("/api/v1/defects", headers=viewer).json()["sync_token"]

    assert changes(full["sync_token"]) == ([], [])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE defects SET miss_count = miss_count")  # a recount to the same number
        assert changes(full["sync_token"]) == ([], [])
        conn.execute("UPDATE defects SET miss_count = 2 WHERE id = %s", (far,))  # the recount sets no stamp itself
    after_recount = client.get("/api/v1/defects", params={"since_token": full["sync_token"]}, headers=viewer).json()
    assert [f["id"] for f in after_recount["features"]] == [far]
    assert after_recount["features"][0]["properties"]["miss_count"] == 2
    booked = client.patch(f"/api/v1/defects/{far}", json={"status": "scheduled"}, headers=manager)
    assert booked.status_code == 200
    mark = latest()
    assert changes(mark) == ([], [])
    note = client.patch(f"/api/v1/defects/{far}", json={"status": "scheduled", "note": "crew B, Tuesday"},
                        headers=manager)  # a note alone: the list shows it, so it is a change
    assert note.status_code == 200
    assert changes(mark) == ([far], [])

    # A write that began before an answer was read and committed after it, however long it waited: seen.
    mark = latest()
    with psycopg.connect(dsn) as slow:
        slow.execute("UPDATE defects SET severity = 0.99 WHERE id = %s", (first,))  # holds the row, uncommitted
        during = latest()
        assert changes(during) == ([], [])
        patched = threading.Thread(target=lambda: client.patch(  # waits on the row lock
            f"/api/v1/defects/{first}", json={"status": "confirmed", "note": "seen from the pavement"},
            headers=manager))
        patched.start()
        time.sleep(0.5)
        after = latest()
    patched.join(10)
    assert changes(during) == ([first], []) and changes(after) == ([first], [])
    assert client.get(f"/api/v1/defects/{first}", headers=viewer).json()["properties"]["severity"] == 0.99

    # Merged away: in `removed`, with the survivor among the changes.
    mark = latest()
    with psycopg.connect(dsn) as conn:  # the second settles 4 m from the first: one pothole
        lat, lon = offset(*base, 4.0, 0.0)
        conn.execute("UPDATE defects SET geom = %s::geography WHERE id = %s", (f"SRID=4326;POINT({lon} {lat})", second))
        assert merge_neighbours(conn, {first, second}, cfg.aggregate) == {first}
    assert changes(mark) == ([first], [second])
    # A copy kept with filters hears of a defect that left them (a copy of the open ones kept a dismissed one).
    mark = latest()
    assert client.patch(f"/api/v1/defects/{far}", json={"status": "dismissed"}, headers=manager).status_code == 200
    assert changes(mark, status="open") == ([], [far])
    assert changes(mark) == ([far], [])
    # Pages: `removed` once, on the first; each page has its own sync_token (a replica may answer one of them).
    paged = client.get("/api/v1/defects", params={"since_token": full["sync_token"], "limit": 1}, headers=viewer).json()
    rest = client.get("/api/v1/defects", params={"since_token": full["sync_token"], "limit": 1,
                                                 "cursor": paged["next_cursor"]}, headers=viewer).json()
    assert paged["removed"] == [second] and "removed" not in rest and "sync_token" in rest
    for bad in ("yesterday", "-1", "0", "1" * 21, "1.1." + "9" * 20):
        refused = client.get("/api/v1/defects", params={"since_token": bad}, headers=viewer)
        assert refused.status_code == 400 and "since_token" in refused.text, bad
    # A token from another history of the database (restored from pg_dump: another cluster; a failover: another
    # timeline) or beyond this primary's transactions: ids there mean other writes, so the copy reloads whole.
    history = full["sync_token"].rsplit(".", 1)[0]
    cluster, timeline, table = history.split(".")
    for foreign in ("1.1.5", f"{cluster}.{timeline}.5", f"{cluster}.2.{table}.5", f"{cluster}.{timeline}.1.5",
                    f"{history}.99999999999"):
        for path in ("/api/v1/defects", "/api/v1/coverage"):
            gone = client.get(path, params={"since_token": foreign}, headers=viewer)
            assert gone.status_code == 410 and "load everything again" in gone.json()["detail"], (foreign, path)

    # Coverage never changes: what is new since a token is what was stored since, a late upload of an old drive
    # too; the answer says which window it used (its default start is the API host's clock less a day).
    from fleet_server.store import Batch, store_batch
    from tests.server_fixtures import make_coverage

    now = datetime.now(UTC)
    line = [base, offset(*base, 100.0, 0.0)]
    old_drive = make_coverage("veh-a", line, now - timedelta(hours=5), now - timedelta(hours=5) + timedelta(minutes=1))
    with psycopg.connect(dsn, autocommit=True) as conn:
        store_batch(conn, Batch(coverage=[(make_coverage("veh-a", line, now - timedelta(hours=2), now), now)]),
                    cfg.aggregate)
        roads = client.get("/api/v1/coverage", headers=viewer).json()
        assert len(roads["features"]) == 1
        assert abs(datetime.fromisoformat(roads["since"]) - (now - timedelta(days=1))) < timedelta(minutes=1)
        store_batch(conn, Batch(coverage=[(old_drive, now)]), cfg.aggregate)
    late = client.get("/api/v1/coverage", params={"since_token": roads["sync_token"]}, headers=viewer).json()
    assert [f["id"] for f in late["features"]] == [old_drive["coverage_id"]]


@pytest.mark.services
@pytest.mark.parametrize("page", [1, 2, 3])
def test_exports_stream_every_defect_once_across_pages(api, monkeypatch: pytest.MonkeyPatch, page: int) -> None:
    """The exports stream in pages (a whole city's file built in memory took 300 MB per export): the pages join
    into one valid file with every defect once, whether the last page is full or not."""
    from fleet_server import api_defects

    client, _cfg, dsn = api
    _seed(client, dsn)
    viewer = bearer(token(dsn, "viewer", "vera"))
    whole = sorted(f["id"] for f in client.get("/api/v1/defects", headers=viewer).json()["features"])
    assert len(whole) == 3
    monkeypatch.setattr(api_defects, "EXPORT_PAGE", page)
    rows = list(csv.DictReader(io.StringIO(client.get("/api/v1/defects.csv", headers=viewer).text)))
    assert sorted(int(r["id"]) for r in rows) == whole
    gj = client.get("/api/v1/defects.geojson", headers=viewer)
    assert gj.headers["content-type"].startswith("application/geo+json")
    assert sorted(f["id"] for f in gj.json()["features"]) == whole
    assert client.get("/api/v1/defects.geojson", params={"class": "nothing"}, headers=viewer).json() == \
        {"type": "FeatureCollection", "features": []}


@pytest.mark.services
def test_csv_cells_a_spreadsheet_would_run_are_neutralised(api) -> None:
    # New classes cannot start a formula (validate.class_name); rows stored before that rule still could.
    client, _cfg, dsn = api
    dev = bearer(token(dsn, "device", "veh-x", device_id="veh-x"))
    formulas = ['=HYPERLINK("http://x","click")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\r=1"]
    for i, _ in enumerate(formulas):
        event = make_event("veh-x", 48.1 + i * 0.01, -0.5)  # a negative longitude is a number: left alone
        assert client.post("/api/v1/detections", json=event, headers=dev).status_code == 202
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i, formula in enumerate(formulas):
            conn.execute("UPDATE defects SET class = %s WHERE id = (SELECT min(id) + %s FROM defects)", (formula, i))
    rows = list(csv.DictReader(io.StringIO(client.get("/api/v1/defects.csv", headers=bearer(token(dsn, "viewer")))
                                           .text, newline="")))
    assert [r["class"] for r in rows] == ["'" + f for f in formulas]
    assert {r["lon"] for r in rows} == {"-0.5"}


@pytest.mark.services
def test_devices_health_openapi_and_metrics(api) -> None:
    client, _cfg, dsn = api
    _seed(client, dsn)
    viewer = bearer(token(dsn, "viewer"))
    devices = client.get("/api/v1/devices", headers=viewer).json()
    assert [d["id"] for d in devices] == ["veh-a"] and devices[0]["sightings"] == 3
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    head = client.head("/health")  # uptime monitors probe with HEAD
    assert head.status_code == 200 and head.content == b""
    assert "/api/v1/defects" in client.get("/openapi.json").json()["paths"]
    text = client.get("/metrics").text
    for name in ("road_api_latency_seconds", "road_queue_depth", "road_inference_latency_seconds"):
        assert name in text
    lat, lon = offset(48.1, 11.5, 10, 0)
    assert abs(distance_m(48.1, 11.5, lat, lon) - 10) < 1e-6 and lon == 11.5


@pytest.mark.services
def test_devices_page_by_cursor_in_code_point_order_and_whole_without_paging(api) -> None:
    """A 10,000-vehicle fleet was one list of megabytes: a client had no way to read it a page at a time."""
    client, _cfg, dsn = api
    ids = ["Box-2", "box-10", "box-9", "van.1", "van_1", "Z-1", "a"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for device_id in ids:
            conn.execute("INSERT INTO devices (id) VALUES (%s)", (device_id,))
    viewer = bearer(token(dsn, "viewer"))
    whole = client.get("/api/v1/devices", headers=viewer)
    assert "x-next-cursor" not in whole.headers and sorted(d["id"] for d in whole.json()) == sorted(ids)
    seen, url, pages = [], "/api/v1/devices?limit=3", 0
    while url:
        got = client.get(url, headers=viewer)
        assert got.status_code == 200 and len(got.json()) <= 3
        seen += [d["id"] for d in got.json()]
        pages += 1
        nxt = got.headers.get("x-next-cursor")
        assert (nxt is None) == ("link" not in got.headers)
        url = f"/api/v1/devices?limit=3&cursor={nxt}" if nxt else None
        if nxt:
            assert f"cursor={nxt}" in got.headers["link"] and got.headers["link"].endswith('rel="next"')
    assert seen == sorted(ids) and pages == 3
    assert [d["id"] for d in client.get("/api/v1/devices?cursor=box-9", headers=viewer).json()] == ["van.1", "van_1"]
    assert client.get("/api/v1/devices?limit=0", headers=viewer).status_code == 400
    headers = client.get("/openapi.json").json()["paths"]["/api/v1/devices"]["get"]["responses"]["200"]["headers"]
    assert set(headers) == {"X-Next-Cursor", "Link"}  # a generated client knows they are there


@pytest.mark.services
def test_long_answers_are_gzipped_for_clients_that_accept_it_pictures_and_models_are_not(make_cfg) -> None:
    """A 10,000-vehicle device list was megabytes of JSON every refresh of every open tab."""
    from fleet_server.commands import stage_model

    cfg = make_cfg()
    client = TestClient(create_app(cfg))
    try:
        dsn = cfg.database.resolve_dsn()
        _seed(client, dsn)
        viewer = bearer(token(dsn, "viewer"))
        plain = client.get("/api/v1/defects?limit=5000", headers={**viewer, "Accept-Encoding": "identity"})
        packed = client.get("/api/v1/defects?limit=5000", headers={**viewer, "Accept-Encoding": "gzip"})
        assert "content-encoding" not in plain.headers and len(plain.content) > cfg.api.compress_min_bytes
        assert packed.headers["content-encoding"] == "gzip"
        assert packed.json()["features"] == plain.json()["features"]
        assert int(packed.headers["content-length"]) < len(plain.content) / 2
        detail = client.get(f"/api/v1/defects/{plain.json()['features'][0]['id']}", headers=viewer).json()
        thumb = client.get(detail["sightings"][0]["thumbnail_url"], headers={**viewer, "Accept-Encoding": "gzip"})
        assert thumb.status_code == 200 and "content-encoding" not in thumb.headers
        model = cfg.database.dsn_file.parent / "big.onnx"
        model.write_bytes(bytes(200_000))  # would shrink a thousandfold: left alone all the same
        sha = stage_model(cfg, model)
        device = bearer(token(dsn, "device", "veh-c", device_id="veh-c"))
        got = client.get(f"/api/v1/models/{sha}.onnx", headers={**device, "Accept-Encoding": "gzip"})
        assert got.status_code == 200 and "content-encoding" not in got.headers and len(got.content) == 200_000
    finally:
        client.app.state.pool.close()
    off = TestClient(create_app(cfg.model_copy(update={"api": cfg.api.model_copy(update={"compress_min_bytes": 0})})))
    try:
        assert "content-encoding" not in off.get("/api/v1/defects?limit=5000",
                                                 headers={**viewer, "Accept-Encoding": "gzip"}).headers
    finally:
        off.app.state.pool.close()


@pytest.mark.services
def test_coverage_stale_devices_models_and_cors(api) -> None:
    client, cfg, dsn = api
    from datetime import UTC, datetime, timedelta

    import psycopg

    from fleet_server.commands import model_link, stage_model
    from fleet_server.store import Batch, store_batch
    from tests.server_fixtures import make_coverage

    now = datetime.now(UTC)
    cov = make_coverage("veh-c", [(48.1, 11.5), (48.101, 11.5)], now - timedelta(minutes=5), now - timedelta(minutes=4))
    with psycopg.connect(dsn, autocommit=True) as conn:
        store_batch(conn, Batch(coverage=[(cov, now)]), cfg.aggregate)
        conn.execute("UPDATE devices SET state = 'online', last_seen = now() - interval '11 minutes'")
    statuses = [(d, {"state": state, "queue_depth": q, "inference_ms": ms, "inference_errors": n}, now)
                for d, state, q, ms, n in (("veh-x", "online", 7, 40.0, 3), ("veh-y", "online", 5, 120.0, 4),
                                           ("veh-p", "stopped", 1, 50.0, 0))]  # a parked van's last record
    with psycopg.connect(dsn, autocommit=True) as conn:
        store_batch(conn, Batch(statuses=statuses), cfg.aggregate)
    text = client.get("/metrics").text
    assert "road_queue_depth 12.0" in text  # the parked van's queue is not a backlog (it paged every night)
    assert 'road_inference_latency_seconds_bucket{le="0.05",status="ok"} 1.0' in text
    assert 'road_inference_latency_seconds_bucket{le="0.25",status="ok"} 2.0' in text
    # The devices' own counts of failed inferences (the guide's ModelInferenceFailed alert reads this): counted
    # from the first figure this process saw of each device. Their sum fell when a van restarted, and
    # Prometheus took each fall for a counter reset: the alert fired on a fleet powering on.
    assert 'road_inference_latency_seconds_count{status="error"} 0.0' in text
    statuses = [(d, {"state": "online", "queue_depth": 1, "inference_ms": 40.0, "inference_errors": n}, now)
                for d, n in (("veh-x", 5), ("veh-y", 1))]  # veh-x failed twice more; veh-y restarted, failed once
    with psycopg.connect(dsn, autocommit=True) as conn:
        store_batch(conn, Batch(statuses=statuses), cfg.aggregate)
    assert 'road_inference_latency_seconds_count{status="error"} 3.0' in client.get("/metrics").text
    viewer = bearer(token(dsn, "viewer"))
    lines = client.get("/api/v1/coverage", headers=viewer).json()["features"]
    assert len(lines) == 1 and lines[0]["geometry"]["type"] == "LineString"
    assert lines[0]["properties"]["device_id"] == "veh-c"
    assert lines[0]["geometry"]["coordinates"][0] == [11.5, 48.1]
    assert client.get("/api/v1/coverage", params={"since": now.isoformat()}, headers=viewer).json()["features"] == []
    assert client.get("/api/v1/coverage", params={"bbox": "0,0,1,1"}, headers=viewer).json()["features"] == []
    inside = client.get("/api/v1/coverage", params={"bbox": "11.4,48.0,11.6,48.2"}, headers=viewer).json()
    assert [f["properties"]["device_id"] for f in inside["features"]] == ["veh-c"]
    states = {d["id"]: d["state"] for d in client.get("/api/v1/devices", headers=viewer).json()}
    assert states == {"veh-c": "stale", "veh-x": "online", "veh-y": "online", "veh-p": "stopped"}
    # A script asks for the devices in some states, or one device (a 400 named the state parameter unknown).
    quiet = client.get("/api/v1/devices", params={"state": "stale,stopped"}, headers=viewer).json()
    assert sorted(d["id"] for d in quiet) == ["veh-c", "veh-p"]
    assert client.get("/api/v1/devices", params={"state": "asleep"}, headers=viewer).status_code == 400
    twice = client.get("/api/v1/devices?state=stale&state=stopped", headers=viewer)  # used the last one alone
    assert twice.status_code == 400 and "more than once" in twice.json()["detail"]
    assert client.get("/api/v1/devices", params={"problem": "camera"}, headers=viewer).json() == []
    one = client.get("/api/v1/devices/veh-p", headers=viewer)
    assert one.status_code == 200 and one.json()["state"] == "stopped" and one.json()["problem_codes"] == []
    assert client.get("/api/v1/devices/veh-none", headers=viewer).status_code == 404
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Device"]["properties"]
    assert {"state", "problems", "problem_codes", "last_fix", "health"} <= set(schema)  # was an untyped array
    # Model download: any valid token, by sha256 only.
    model = cfg.database.dsn_file.parent / "m.onnx"
    model.write_bytes(b"onnx-bytes")
    sha = stage_model(cfg, model)
    device = bearer(token(dsn, "device", "veh-c", device_id="veh-c"))
    got = client.get(f"/api/v1/models/{sha}.onnx", headers=device)
    assert got.status_code == 200 and got.content == b"onnx-bytes"
    assert client.get(f"/api/v1/models/{sha}.onnx").status_code == 403
    assert client.get("/api/v1/models/..%2F..%2Fetc%2Fpasswd", headers=device).status_code == 404
    assert client.get(f"/api/v1/models/{'0' * 64}.onnx", headers=device).status_code == 404
    # ...or the link `model push` signs for one device until the command expires: no token needed (the agent
    # has none), but only for that model, that device, that long, and never for a revoked device.
    soon = now + timedelta(hours=1)
    link = model_link(cfg, "", sha, "veh-c", soon)
    got = client.get(link)
    assert got.status_code == 200 and got.content == b"onnx-bytes"
    for bad in (link.replace("device=veh-c", "device=veh-x"),     # another device's
                link.replace("expires=", "expires=1"),              # a longer life
                link[:-4] + "0000",                                 # a forged signature
                link.split("&sig=")[0],                             # none (and no token)
                f"/api/v1/models/{sha}.onnx?sig=abc"):              # a signature without device and expiry
        assert client.get(bad).status_code == 403, bad
    stale = model_link(cfg, "", sha, "veh-c", now - timedelta(seconds=1))
    assert client.get(stale).status_code == 403 and "expired" in client.get(stale).text
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE devices SET revoked_at = now() WHERE id = 'veh-c'")
    assert client.get(link).status_code == 403
    # CORS: only the configured origin is let in.
    allowed = client.options("/api/v1/defects", headers={"Origin": "https://fleet.example.org",
                                                         "Access-Control-Request-Method": "GET"})
    assert allowed.headers.get("access-control-allow-origin") == "https://fleet.example.org"
    other = client.get("/api/v1/me", headers={"Origin": "https://evil.example", **viewer})
    assert "access-control-allow-origin" not in other.headers


def test_database_away_gives_503_not_500(tmp_path) -> None:
    from fleet_server.config import parse

    (tmp_path / "dsn").write_text("postgresql://roadmon:x@127.0.0.1:9/nowhere?connect_timeout=1")
    cfg = parse({"database": {"dsn_file": str(tmp_path / "dsn"), "connect_timeout_s": 1},
                 "mqtt": {"port": 9}})
    client = TestClient(create_app(cfg))
    try:
        health = client.get("/health")
        # Degraded with a short reason; the database's own error text (host, port, user) stays in the log.
        assert health.status_code == 503
        assert health.json() == {"status": "degraded", "database": "unreachable", "broker": "unreachable"}
        r = client.get("/api/v1/me", headers=bearer("rmt_x_y"))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
    finally:
        client.app.state.pool.close()


@pytest.mark.services
def test_what_an_analyst_filters_by_is_applied_or_refused_never_ignored(api) -> None:
    """Found by an analyst loading the data into GIS tools: unknown filters were ignored (200, every defect),
    bbox latitudes could be +-180, a box across the antimeridian was refused, a crack whose line reached into a
    box was left out, a comma list of classes matched nothing, and coverage stopped at 5,000 lines silently."""
    client, cfg, dsn = api
    from datetime import UTC, datetime, timedelta

    from fleet_server.store import Batch, store_batch
    from tests.server_fixtures import make_coverage

    _seed(client, dsn)
    viewer = bearer(token(dsn, "viewer"))
    manager = bearer(token(dsn, "manager"))
    for path, params, who in (("/api/v1/defects", {"min_confidence": "0.99"}, viewer),
                              ("/api/v1/defects", {"sort": "-severity"}, viewer),
                              ("/api/v1/defects.csv", {"limit": "5"}, viewer),
                              ("/api/v1/coverage", {"devices": "veh-a"}, viewer),
                              ("/api/v1/audit", {"bogus": "1"}, manager)):
        r = client.get(path, params=params, headers=who)
        assert r.status_code == 400 and f"unknown query parameter {next(iter(params))!r}" in r.json()["detail"], r.text
    assert client.get("/api/v1/audit", params={"bogus": "1"}, headers=viewer).status_code == 403  # the role first
    assert "bbox" in client.get("/api/v1/defects", params={"sort": "x"}, headers=viewer).json()["detail"]
    # A cache-buster (jQuery's `cache: false` adds ?_=<time>) is no filter and no mistake.
    assert client.get("/api/v1/defects", params={"_": "1733420000"}, headers=viewer).status_code == 200
    # Latitudes within -90..90; a box with min_lon > max_lon crosses the antimeridian (RFC 7946, 5.2).
    assert client.get("/api/v1/defects", params={"bbox": "-180,-180,180,180"}, headers=viewer).status_code == 400
    assert client.get("/api/v1/defects", params={"bbox": "0,10,1,9"}, headers=viewer).status_code == 400
    dev = bearer(token(dsn, "device", "veh-f", device_id="veh-f"))
    for lon in (179.95, -179.95):
        assert client.post("/api/v1/detections", json=make_event("veh-f", -16.5, lon), headers=dev).status_code == 202
    across = client.get("/api/v1/defects", params={"bbox": "179.9,-17,-179.9,-16"}, headers=viewer).json()
    assert sorted(f["geometry"]["coordinates"][0] for f in across["features"]) == [-179.95, 179.95]
    # Several classes at once, as several statuses.
    crack = make_event("veh-f", 48.15, 11.55, cls="crack", size_m={"width": 0.05, "length": 40.0, "orientation_deg": 0})
    assert client.post("/api/v1/detections", json=crack, headers=dev).status_code == 202
    both = client.get("/api/v1/defects", params={"class": "pothole,Crack"}, headers=viewer).json()["features"]
    assert {f["properties"]["class"] for f in both} == {"pothole", "crack"} and len(both) == 6
    # The crack's point lies outside this box; 20 m of its line reach into it.
    north_end = offset(48.15, 11.55, 19.0, 0.0)
    box = f"{north_end[1] - 1e-4},{north_end[0] - 1e-5},{north_end[1] + 1e-4},{north_end[0] + 1e-4}"
    assert [f["properties"]["class"] for f in client.get("/api/v1/defects", params={"bbox": box},
                                                         headers=viewer).json()["features"]] == ["crack"]
    # Coverage in pages: every line once, in order, however many there are.
    now = datetime.now(UTC)
    records = [make_coverage("veh-c", [(48.1, 11.5 + i * 1e-4), (48.1, 11.5 + (i + 1) * 1e-4)],
                             now - timedelta(minutes=30) + timedelta(seconds=i // 2), now - timedelta(minutes=29))
               for i in range(7)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        store_batch(conn, Batch(coverage=[(c, now) for c in records]), cfg.aggregate)
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/v1/coverage", params=params, headers=viewer).json()
        seen += [f["id"] for f in page["features"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(c["coverage_id"] for c in records) and len(seen) == 7
    assert client.get("/api/v1/coverage", params={"cursor": "yesterday"}, headers=viewer).status_code == 400


@pytest.mark.services
def test_a_submission_held_up_by_a_lock_is_503_and_stored_later_not_500(api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session holding a defect's row for a minute made every phone post wait for the writer and end in 500,
    though the submission was stored afterwards (its retry got 409): the phone was told its data was lost."""
    import functools

    client, _cfg, dsn = api
    dev = bearer(token(dsn, "device", "phone-7", device_id="phone-7"))
    first = make_event("phone-7", 48.1, 11.5, seq=1)
    assert client.post("/api/v1/detections", json=first, headers=dev).status_code == 202
    writer = client.app.state.http_writer
    monkeypatch.setattr(writer, "store", functools.partial(writer.store, timeout_s=1.0))
    held = make_event("phone-7", 48.1, 11.5, seq=2)  # the same pothole: its defect is written
    with psycopg.connect(dsn) as locker:
        locker.execute("SELECT 1 FROM defects FOR UPDATE")
        busy = client.post("/api/v1/detections", json=held, headers=dev)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "30", busy.text
        assert "queued" in busy.json()["detail"]
    deadline = time.monotonic() + 10
    while count(dsn, "SELECT count(*) FROM sightings WHERE event_id = %s", (held["event_id"],)) == 0:
        assert time.monotonic() < deadline, "the held submission was not stored once the lock went"
        time.sleep(0.1)
    assert client.post("/api/v1/detections", json=held, headers=dev).status_code == 409
