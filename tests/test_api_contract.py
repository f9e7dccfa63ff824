"""The API as clients written by others meet it (an outside integrator's fuzzing of the OpenAPI document, a typed
TypeScript client generated from it, and the deployment guide's tests): manager notes and PATCH bodies checked
like every other body, concurrent managers told apart with ETag / If-Match, times that must be times, a reused
event id refused rather than called a duplicate, the caller known before its parameters are judged, CORS on
every refusal, and a document that declares what the server answers."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from fleet_server.api import create_app
from tests.server_fixtures import count, make_cfg, make_event, token

__all__ = ["make_cfg"]

pytestmark = pytest.mark.services
ORIGIN = "https://fleet.example.org"


@pytest.fixture
def api(make_cfg):
    cfg = make_cfg(api={"cors_origins": [ORIGIN], "max_body_bytes": 100_000})
    client = TestClient(create_app(cfg))
    yield client, cfg.database.resolve_dsn()
    client.app.state.pool.close()


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


def a_defect(client: TestClient, dsn: str) -> tuple[int, dict]:
    device = bearer(token(dsn, "device", "van-1", device_id="van-1"))
    r = client.post("/api/v1/detections", json=make_event("van-1", 46.2, 6.1), headers=device)
    assert r.status_code == 202, r.text
    return count(dsn, "SELECT max(id) FROM defects"), device


def test_a_patch_body_is_checked_like_every_other_body(api) -> None:
    client, dsn = api
    defect, _ = a_defect(client, dsn)
    manager = bearer(token(dsn, "manager", "Ana"))
    r = client.patch(f"/api/v1/defects/{defect}", json={"status": "scheduled", "note": "crew\u0000B"}, headers=manager)
    assert r.status_code == 400 and "note" in r.text and "NUL" in r.text, (r.status_code, r.text)  # was a 500
    r = client.patch(f"/api/v1/defects/{defect}", json={"status": "scheduled", "nots": "crew B"}, headers=manager)
    assert r.status_code == 400 and "nots" in r.text, r.text  # the misspelt note was dropped silently
    r = client.patch(f"/api/v1/defects/{defect}", json={}, headers=manager)
    assert r.status_code == 400 and "status, a note, or both" in r.text, r.text
    assert count(dsn, "SELECT count(*) FROM defect_history WHERE defect_id = %s", (defect,)) == 0


def test_a_note_alone_is_history_and_changes_no_status(api) -> None:
    client, dsn = api
    defect, _ = a_defect(client, dsn)
    manager = bearer(token(dsn, "manager", "Ana"))
    r = client.patch(f"/api/v1/defects/{defect}", json={"note": "seen from the bus stop"}, headers=manager)
    assert r.status_code == 200, r.text
    assert r.json()["properties"]["status"] == "new"  # a `new` defect could get no note at all before
    history = client.get(f"/api/v1/defects/{defect}", headers=manager).json()["history"]
    assert [(h["from_status"], h["to_status"], h["note"], h["actor"]) for h in history] == [
        ("new", "new", "seen from the bus stop", "Ana")]


def test_a_stale_if_match_is_412_and_changes_nothing(api) -> None:
    client, dsn = api
    defect, _ = a_defect(client, dsn)
    ana, ben = bearer(token(dsn, "manager", "Ana")), bearer(token(dsn, "manager", "Ben"))
    read = client.get(f"/api/v1/defects/{defect}", headers=ana)
    tag = read.headers["etag"]
    r = client.patch(f"/api/v1/defects/{defect}", json={"status": "repaired"}, headers={**ben, "If-Match": tag})
    assert r.status_code == 200 and r.headers["etag"] != tag, (r.status_code, r.headers)
    # Ana still holds the view from before Ben's repair: last write no longer wins.
    r = client.patch(f"/api/v1/defects/{defect}", json={"status": "scheduled"}, headers={**ana, "If-Match": tag})
    assert r.status_code == 412 and "Ben set it repaired" in r.json()["detail"], (r.status_code, r.text)
    now = client.get(f"/api/v1/defects/{defect}", headers=ana)
    assert now.json()["properties"]["status"] == "repaired" and r.headers["etag"] == now.headers["etag"]
    r = client.patch(f"/api/v1/defects/{defect}", json={"status": "scheduled"},
                     headers={**ana, "If-Match": now.headers["etag"]})
    assert r.status_code == 200 and r.json()["properties"]["status"] == "scheduled"
    # Without If-Match, as before: the last write wins.
    assert client.patch(f"/api/v1/defects/{defect}", json={"status": "confirmed"}, headers=ben).status_code == 200


@pytest.mark.parametrize("value", ["2026", "0.5", "99999999999", "1e9", " 17 "])
def test_a_number_is_no_time(api, value: str) -> None:
    client, dsn = api
    manager = bearer(token(dsn, "manager"))
    for path in ("/api/v1/defects", "/api/v1/defects.geojson", "/api/v1/coverage", "/api/v1/audit"):
        for name in ("since", "until"):
            r = client.get(path, params={name: value}, headers=manager)
            assert r.status_code == 400 and f"query.{name}" in r.text and "not a number" in r.text, (
                path, name, r.status_code, r.text)


def test_an_event_id_reused_with_other_content_is_refused_not_called_a_duplicate(api) -> None:
    client, dsn = api
    first = make_event("van-1", 46.2, 6.1)
    van = bearer(token(dsn, "device", "van-1", device_id="van-1"))
    assert client.post("/api/v1/detections", json=first, headers=van).status_code == 202
    assert client.post("/api/v1/detections", json=first, headers=van).status_code == 409  # a true repeat
    changed = {**first, "confidence": 0.31}
    r = client.post("/api/v1/detections", json=changed, headers=van)
    assert r.status_code == 400 and first["event_id"] in r.json()["detail"], (r.status_code, r.text)
    other = bearer(token(dsn, "device", "bus-2", device_id="bus-2"))
    r = client.post("/api/v1/detections", json={**first, "device_id": "bus-2"}, headers=other)
    assert r.status_code == 400 and "its own id" in r.json()["detail"], (r.status_code, r.text)
    assert count(dsn, "SELECT count(*) FROM rejected WHERE reason LIKE 'event_id already used%%'") == 2
    assert count(dsn, "SELECT count(*) FROM sightings") == 1


def test_the_caller_is_known_before_its_parameters_are_judged(api) -> None:
    client, dsn = api
    assert client.get("/api/v1/audit", params={"bogus": "1"}).status_code == 403  # no token: that first
    admin = bearer(token(dsn, "admin", "Ops"))
    r = client.get("/api/v1/defects", params={"bogus": "1"}, headers=admin)
    assert r.status_code == 400 and "bogus" in r.text
    client.app.state.audit.flush()
    who = count(dsn, "SELECT count(*) FROM audit_log WHERE who = 'Ops' AND status = 400")
    assert who == 1  # it read "unchecked token"
    # A signed model link needs no token; its parameters are still checked.
    assert client.get("/api/v1/models/" + "a" * 64 + ".onnx", params={"bogus": "1"}).status_code == 400


def test_every_refusal_reaches_a_web_client(api) -> None:
    client, dsn = api
    device = bearer(token(dsn, "device", "van-1", device_id="van-1"))
    r = client.post("/api/v1/detections", content=b"{" + b" " * 200_000 + b"}",
                    headers={**device, "Origin": ORIGIN, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.headers.get("access-control-allow-origin") == ORIGIN, r.headers
    r = client.get("/api/v1/defects", headers={"Origin": ORIGIN, "Authorization": "Bearer rmt_x_y"})
    assert r.status_code == 401
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "www-authenticate", "etag", "x-next-cursor"} <= exposed


def test_the_document_declares_what_the_server_answers(api) -> None:
    client, _dsn = api
    doc = client.get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            answers = op["responses"]
            assert "503" in answers, (method, path)
            if "security" in op:
                assert "429" in answers and "Retry-After" in answers["429"].get("headers", {}), (method, path)
            if any(p["name"] == "since_token" for p in op.get("parameters", [])):
                assert "410" in answers, (method, path)
            for code, answer in answers.items():
                if code >= "400":
                    assert "schema" in answer["content"]["application/json"], (method, path, code)
    post = doc["paths"]["/api/v1/detections"]["post"]
    phone, event = post["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert "device_id" not in phone["required"] and not {"event_id", "seq", "schema"} & set(event["required"])
    assert "event_ids" in post["responses"]["409"]["content"]["application/json"]["schema"]["properties"]
    assert {} in doc["paths"]["/api/v1/models/{filename}"]["get"]["security"]  # a signed link needs no token
    geojson = doc["paths"]["/api/v1/defects.geojson"]["get"]["responses"]["200"]["content"]
    assert geojson["application/geo+json"]["schema"]["type"] == "object"


def test_real_answers_match_the_shapes_the_document_declares(api) -> None:
    """Every defect, page, coverage line and audit row was `{[key: string]: unknown}` to a generated client; the
    document now types them, and real answers (a point defect, a crack with its line, a note, a miss, a page with
    `removed`) are validated against it here, so the two cannot drift apart."""
    from datetime import UTC, datetime, timedelta

    import jsonschema
    import psycopg

    from fleet_server.config import AggregateConfig
    from fleet_server.store import Batch, store_batch
    from tests.server_fixtures import make_coverage, offset

    client, dsn = api
    doc = client.get("/openapi.json").json()

    def check(body: object, path: str, method: str = "get") -> None:
        schema = doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        jsonschema.validate(body, {**schema, "components": doc["components"]},
                            format_checker=jsonschema.FormatChecker())

    van = bearer(token(dsn, "device", "van-1", device_id="van-1"))
    crack = make_event("van-1", *offset(46.2, 6.1, 30, 0), cls="crack",
                       size_m={"width": 0.1, "length": 3.0, "orientation_deg": 10.0})
    for event in (make_event("van-1", 46.2, 6.1), crack):
        r = client.post("/api/v1/detections", json=event, headers=van)
        assert r.status_code == 202, r.text
    now = datetime.now(UTC)
    drive = make_coverage("van-1", [offset(46.2, 6.1, -50, 0), offset(46.2, 6.1, 80, 0)], now - timedelta(seconds=20),
                          now)
    with psycopg.connect(dsn, autocommit=True) as conn:
        store_batch(conn, Batch(coverage=[(drive, now)]), AggregateConfig())
    manager = bearer(token(dsn, "manager", "Ana"))
    page = client.get("/api/v1/defects", headers=manager).json()
    assert len(page["features"]) == 2
    assert sorted(f["properties"]["line"] is None for f in page["features"]) == [False, True]  # a crack's line
    first = page["features"][0]["id"]
    patched = client.patch(f"/api/v1/defects/{first}", json={"status": "scheduled", "note": "crew B"}, headers=manager)
    check(patched.json(), "/api/v1/defects/{defect_id}", "patch")
    check(client.get("/api/v1/defects", headers=manager).json(), "/api/v1/defects")
    changed = client.get("/api/v1/defects", params={"since_token": page["sync_token"], "status": "new"},
                         headers=manager).json()
    assert changed["removed"] == [first]  # the first page of a since_token answer
    check(changed, "/api/v1/defects")
    for feature in page["features"]:
        check(client.get(f"/api/v1/defects/{feature['id']}", headers=manager).json(), "/api/v1/defects/{defect_id}")
    check(client.get("/api/v1/coverage", headers=manager).json(), "/api/v1/coverage")
    check(client.get("/api/v1/me", headers=manager).json(), "/api/v1/me")
    check(client.get("/api/v1/me", headers=van).json(), "/api/v1/me")
    client.app.state.audit.flush()
    rows = client.get("/api/v1/audit", headers=manager).json()
    assert rows
    check(rows, "/api/v1/audit")
    with pytest.raises(jsonschema.ValidationError):  # the shapes are strict enough to catch a drift
        check({**page, "next_cursor": "12"}, "/api/v1/defects")


def test_an_event_sent_without_its_id_is_stored_once_however_often_it_is_sent(api) -> None:
    """A client may leave out event_id; one that did and retried after a lost answer stored the sighting twice (a
    re-test's finding): the id now comes from the content, as a phone body's does."""
    client, dsn = api
    van = bearer(token(dsn, "device", "van-1", device_id="van-1"))
    body = {k: v for k, v in make_event("van-1", 46.2, 6.1).items() if k not in ("event_id", "seq", "device_id")}
    first = client.post("/api/v1/detections", json=body, headers=van)
    again = client.post("/api/v1/detections", json=dict(reversed(body.items())), headers=van)
    assert (first.status_code, again.status_code) == (202, 409), (first.text, again.text)
    assert first.json()["event_id"] == again.json()["event_id"]
    assert count(dsn, "SELECT count(*) FROM sightings") == 1
    other = client.post("/api/v1/detections", json={**body, "confidence": 0.55}, headers=van)
    assert other.status_code == 202 and other.json()["event_id"] != first.json()["event_id"]


def test_a_role_is_judged_before_the_parameters(api) -> None:
    client, dsn = api
    defect, van = a_defect(client, dsn)
    viewer = bearer(token(dsn, "viewer", "Val"))
    for headers, method, url in ((van, "GET", "/api/v1/devices/van-1?x=1"), (van, "GET", "/api/v1/defects?bbox="),
                                 (van, "GET", f"/api/v1/defects/{defect}?x=1"), (van, "GET", "/api/v1/coverage?x="),
                                 (viewer, "PATCH", f"/api/v1/defects/{defect}?x=1"),
                                 (viewer, "GET", "/api/v1/audit?x")):
        r = client.request(method, url, headers=headers, json={"status": "confirmed"})
        assert r.status_code == 403 and "role" in r.text, (url, r.status_code, r.text)
    # A model download without a signed link: the token is checked first and the call audited under its name.
    r = client.get("/api/v1/models/" + "a" * 64 + ".onnx", params={"expires": "zz"}, headers=viewer)
    assert r.status_code == 400
    client.app.state.audit.flush()
    assert count(dsn, "SELECT count(*) FROM audit_log WHERE path LIKE '/api/v1/models/%%' AND who = 'Val'") == 1
    assert count(dsn, "SELECT count(*) FROM audit_log WHERE who = 'unchecked token'") == 0


def test_notes_are_text_a_screen_can_show_and_tags_name_their_defect(api) -> None:
    client, dsn = api
    defect, _ = a_defect(client, dsn)
    other = make_event("van-1", 46.3, 6.2)
    assert client.post("/api/v1/detections", json=other, headers=bearer(token(dsn, "device", "v2", device_id="van-1"))
                       ).status_code == 202
    manager = bearer(token(dsn, "manager", "Ana"))
    for note in ("a\u001b[31mb", "x\u0085", "\u0007"):
        r = client.patch(f"/api/v1/defects/{defect}", json={"note": note}, headers=manager)
        assert r.status_code == 400 and "control character" in r.text, (note, r.text)
    r = client.patch(f"/api/v1/defects/{defect}", json={"note": " \u200b "}, headers=manager)
    assert r.status_code == 400 and "status, a note, or both" in r.text  # a blank note is none
    r = client.patch(f"/api/v1/defects/{defect}", json={"status": "confirmed", "note": "  "}, headers=manager)
    assert r.status_code == 200
    history = client.get(f"/api/v1/defects/{defect}", headers=manager).json()["history"]
    assert [h["note"] for h in history] == [None]
    assert client.patch(f"/api/v1/defects/{defect}", json={"note": "line one\n\tline two"},
                        headers=manager).status_code == 200
    # Two defects, both untouched by people: their tags differ (a tag read from one passed on the other).
    ids = sorted({f["id"] for f in client.get("/api/v1/defects", headers=manager).json()["features"]})
    tags = [client.get(f"/api/v1/defects/{i}", headers=manager).headers["etag"] for i in ids]
    assert tags[0] != tags[1]
    r = client.patch(f"/api/v1/defects/{ids[1]}", json={"status": "scheduled"},
                     headers={**manager, "If-Match": tags[0]})
    assert r.status_code == 412
    r = client.patch(f"/api/v1/defects/{ids[1]}", json={"status": "scheduled"},
                     headers={**manager, "If-Match": f"W/{tags[1]}"})
    assert r.status_code == 412  # If-Match compares strongly


def test_if_match_is_read_as_written_and_a_merge_is_named(api) -> None:
    """An attacker's and a second manager's findings: a malformed If-Match read "changed since it was read" for a
    defect nobody had changed, only the first If-Match line counted, and a tag from a defect merged away gave a
    412 that did not say so."""
    client, dsn = api
    defect, _ = a_defect(client, dsn)
    manager = bearer(token(dsn, "manager", "Ana"))
    tag = client.get(f"/api/v1/defects/{defect}", headers=manager).headers["etag"]
    for bad in ("garbage", tag.strip('"'), ",", '"x", *'):
        r = client.patch(f"/api/v1/defects/{defect}", json={"note": "n"}, headers={**manager, "If-Match": bad})
        assert r.status_code == 400 and "If-Match" in r.text, (bad, r.status_code, r.text)
    # Two header lines, the stale one first: both are read.
    r = client.patch(f"/api/v1/defects/{defect}", json={"note": "n"},
                     headers=[*manager.items(), ("If-Match", '"0-new-0"'), ("If-Match", tag)])
    assert r.status_code == 200, r.text
    with psycopg.connect(dsn, autocommit=True) as conn:  # as aggregate.merge_neighbours leaves a merge
        conn.execute("INSERT INTO defect_merges (dropped_id, kept_id) VALUES (%s, %s)", (defect + 1000, defect))
    r = client.patch(f"/api/v1/defects/{defect}", json={"note": "n"},
                     headers={**manager, "If-Match": f'"{defect + 1000}-new-0"'})
    assert r.status_code == 412 and f"was merged into defect {defect}" in r.json()["detail"], r.text
    r = client.patch(f"/api/v1/defects/{defect}", json={"note": "a\u202eb"}, headers=manager)
    assert r.status_code == 400 and "U+202E" in r.text  # a bidirectional override reads otherwise than stored


def test_the_model_route_serves_only_files_staged_in_its_folder(api, tmp_path) -> None:
    client, dsn = api
    folder = Path(client.app.state.cfg.models.dir)
    folder.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("not a model")
    (folder / ("a" * 64 + ".onnx")).symlink_to(secret)
    (folder / ("b" * 64 + ".onnx")).write_bytes(b"onnx")
    device = bearer(token(dsn, "device", "van-1", device_id="van-1"))
    assert client.get("/api/v1/models/" + "a" * 64 + ".onnx", headers=device).status_code == 404
    assert client.get("/api/v1/models/" + "b" * 64 + ".onnx", headers=device).content == b"onnx"
    r = client.get("/api/v1/models/" + "b" * 64 + ".onnx%0a", headers=device)
    assert r.status_code == 404 and "named <sha256>.onnx" in r.text
