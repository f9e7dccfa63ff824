"""The HTTP API under hostile input: body caps, NUL in parameters, bodies that break json.loads, throttled
token guessing that leaves valid tokens alone, client addresses from trusted proxies only, failures in the
metrics, immediate revocation, rotation and expiry, invalid bodies kept out of the rate, a rotated database
password, and a fuzz of the routes (never a 500)."""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from datetime import timedelta
from urllib.parse import quote_from_bytes

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from fleet_server import api_detections, auth
from fleet_server.api import create_app
from tests.server_fixtures import count, make_cfg, make_event, token, wait_for

__all__ = ["make_cfg"]

pytestmark = pytest.mark.services


@pytest.fixture
def api(make_cfg):
    cfg = make_cfg(api={"rate_limit_per_hour": 5, "max_body_bytes": 100_000, "auth_failures_per_minute": 10})
    client = TestClient(create_app(cfg))
    yield client, cfg, cfg.database.resolve_dsn()
    client.app.state.pool.close()


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


def test_bodies_over_the_cap_are_refused_before_they_are_read(api) -> None:
    client, _cfg, dsn = api
    dev = bearer(token(dsn, "device", "phone-1", device_id="phone-1"))
    big = b'{"x": "' + b"A" * 200_000 + b'"}'
    r = client.post("/api/v1/detections", content=big, headers=dev)
    assert r.status_code == 413
    # Without Content-Length (chunked): refused as soon as the stream passes the cap.
    r = client.post("/api/v1/detections", content=iter([big[:60_000], big[60_000:]]), headers=dev)
    assert r.status_code == 413
    assert count(dsn, "SELECT count(*) FROM rejected") == 0  # nothing of it was stored
    assert count(dsn, "SELECT count(*) FROM http_submissions") == 0


def test_bodies_that_break_json_loads_are_400_and_kept_small(api) -> None:
    client, _cfg, dsn = api
    dev = bearer(token(dsn, "device", "phone-2", device_id="phone-2"))
    for body in (b"[" * 10_000 + b"]" * 10_000, b'{"seq": ' + b"9" * 5000 + b"}", b'{"class": "\xff"}'):
        r = client.post("/api/v1/detections", content=body, headers=dev)
        assert r.status_code == 400, (r.status_code, r.text[:200])
    assert count(dsn, "SELECT max(length(raw)) FROM rejected WHERE source = 'http'") <= 4096


def test_nul_and_invalid_utf8_in_query_parameters_are_400(api) -> None:
    client, _cfg, dsn = api
    viewer = bearer(token(dsn, "viewer"))
    for url in ("/api/v1/defects?class=pot%00hole", "/api/v1/coverage?device=a%00b", "/api/v1/defects?class=%ff",
                "/api/v1/defects?class=pot%2500hole"):
        r = client.get(url, headers=viewer)
        expected = 200 if "%25" in url else 400  # an escaped percent sign is just text
        assert r.status_code == expected, (url, r.status_code, r.text)


def test_times_in_query_parameters_are_read_or_refused_by_name(api) -> None:
    client, _cfg, dsn = api
    viewer = bearer(token(dsn, "manager"))
    for path, name, value in (("/api/v1/defects", "since", "0001-01-01T00:00:00+14:00"),
                              ("/api/v1/coverage", "until", "9999-12-31T23:59:59-14:00"),
                              ("/api/v1/audit", "since", "yesterday")):
        r = client.get(path, params={name: value}, headers=viewer)
        assert r.status_code == 400 and r.json()["detail"][0].startswith(f"query.{name}: "), r.text
    for value in ("2026-12-05t06:50:31z", "2026-12-05T06:50:31"):  # lower case; no zone: UTC
        assert client.get("/api/v1/defects", params={"since": value}, headers=viewer).status_code == 200


def test_a_past_period_of_the_audit_log_can_be_read_page_by_page(api) -> None:
    """The audit log took `since` only, newest first, one page: a night's rows were out of reach once more calls
    than a page had been made since (the dashboard writes a few per refresh)."""
    client, _cfg, dsn = api
    manager = bearer(token(dsn, "manager", "back-office"))
    for _ in range(5):
        assert client.get("/api/v1/me", headers=manager).status_code == 200
    every = client.get("/api/v1/audit", params={"who": "back-office"}, headers=manager).json()
    assert len(every) >= 5 and [r["id"] for r in every] == sorted((r["id"] for r in every), reverse=True)
    pages, cursor = [], None
    while True:
        page = client.get("/api/v1/audit", params={"who": "back-office", "limit": 2}
                          | ({"cursor": cursor} if cursor else {}), headers=manager).json()
        if not page:
            break
        pages += page
        cursor = page[-1]["id"]
    newest = every[0]["id"]  # the audit calls since are audited too
    assert [r["id"] for r in pages if r["id"] <= newest] == [r["id"] for r in every]
    middle = every[len(every) // 2]["at"]
    until = client.get("/api/v1/audit", params={"who": "back-office", "until": middle}, headers=manager).json()
    assert until and all(r["at"] <= middle for r in until) and len(until) < len(every)


def test_refused_bodies_do_not_use_up_the_hourly_rate(api) -> None:
    # A device with a bug must not lose an hour of valid uploads: 400s are kept as dead letters (capped per
    # device and hour on their own), accepted and duplicate posts count towards api.rate_limit_per_hour (5).
    client, _cfg, dsn = api
    dev = bearer(token(dsn, "device", "phone-3", device_id="phone-3"))
    for _ in range(6):
        assert client.post("/api/v1/detections", json=make_event("phone-3", 95, 11.5), headers=dev).status_code == 400
    assert client.post("/api/v1/detections", content=b"{nope", headers=dev).status_code == 400
    assert count(dsn, "SELECT count(*) FROM rejected WHERE device_id = 'phone-3'") == 7
    event = make_event("phone-3", 48.1, 11.5)
    codes = [client.post("/api/v1/detections", json=event, headers=dev).status_code for _ in range(5)]
    assert codes == [202, 409, 409, 409, 409]
    r = client.post("/api/v1/detections", json=make_event("phone-3", 48.2, 11.5), headers=dev)
    assert r.status_code == 429 and r.headers["retry-after"]


def test_failed_authentication_is_throttled_without_locking_out_valid_tokens(api) -> None:
    client, _cfg, dsn = api
    good = bearer(token(dsn, "viewer"))
    unused = bearer(token(dsn, "viewer", "first time from here"))  # valid, but not remembered yet
    revoked = token(dsn, "device", "phone-r", device_id="phone-r")
    with psycopg.connect(dsn, autocommit=True) as conn:
        auth.revoke_tokens(conn, device_id="phone-r")
    assert client.get("/api/v1/me", headers=good).status_code == 200
    for _ in range(10):
        assert client.get("/api/v1/me", headers=bearer(revoked)).status_code == 401
    # The address is throttled for tokens that cannot be valid: unknown and revoked ones, no argon2 check...
    r = client.get("/api/v1/me", headers=bearer(f"rmt_{secrets.token_hex(8)}_guess"))
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert client.post("/api/v1/detections", json={}, headers=bearer(revoked)).status_code == 429
    # ...while valid tokens from the same address (behind a proxy: the whole fleet) still get in, remembered
    # or not.
    assert client.get("/api/v1/me", headers=good).status_code == 200
    assert client.get("/api/v1/me", headers=unused).status_code == 200
    # A known lookup with a wrong secret is checked (and fails) rather than waved through.
    forged = good["Authorization"].rsplit("_", 1)[0] + "_wrong"
    assert client.get("/api/v1/me", headers={"Authorization": forged}).status_code == 401
    other = TestClient(client.app, client=("10.1.2.3", 5000))
    assert other.get("/api/v1/me", headers=bearer(f"rmt_{secrets.token_hex(8)}_guess")).status_code == 401
    metrics = client.get("/metrics").text
    assert "road_api_auth_throttled_total" in metrics
    assert 'road_detection_submissions_total{code="429",status="failed"}' in metrics


def test_guessing_one_tokens_secret_is_throttled_by_its_lookup_from_any_address(api, monkeypatch) -> None:
    """Whoever holds one token knows its lookup; with wrong secrets it passes the address throttle (it names an
    active token) and each costs an argon2 check. Past the limit per minute such a lookup is 429 without one, from
    every address, while its holder (remembered) and every other token still get in."""
    client, cfg, dsn = api
    mine = bearer(token(dsn, "viewer", "holder"))
    other = bearer(token(dsn, "viewer", "someone else"))
    assert client.get("/api/v1/me", headers=mine).status_code == 200  # remembered from now on
    checks = []
    real = auth.verify
    monkeypatch.setattr(auth, "verify", lambda conn, t: checks.append(t) or real(conn, t))
    lookup = mine["Authorization"].split()[1].rsplit("_", 1)[0]
    limit = cfg.api.auth_failures_per_minute
    answers = []
    for i in range(limit + 10):
        address = (f"10.9.{i // 250}.{i % 250 + 1}", 4000)  # a new address each time: no address is throttled
        guess = TestClient(client.app, client=address).get(
            "/api/v1/me", headers={"Authorization": f"Bearer {lookup}_{secrets.token_urlsafe(32)}"})
        answers.append(guess.status_code)
    assert answers == [401] * limit + [429] * 10
    assert len(checks) == limit
    assert client.get("/api/v1/me", headers=mine).status_code == 200
    assert client.get("/api/v1/me", headers=other).status_code == 200


def test_answers_carry_the_browsers_safety_headers(api) -> None:
    client, _cfg, _dsn = api
    for r in (client.get("/"), client.get("/api/v1/me"), client.get("/api/v1/me?x=%00")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_the_client_address_comes_from_trusted_proxies_only(make_cfg) -> None:
    cfg = make_cfg(api={"auth_failures_per_minute": 3, "trusted_proxies": ["10.9.0.0/16"]})
    dsn = cfg.database.resolve_dsn()
    app = create_app(cfg)
    ingress = TestClient(app, client=("10.9.0.7", 4000))
    outsider = TestClient(app, client=("192.0.2.50", 4000))
    manager = bearer(token(dsn, "manager", "auditor"))
    try:
        def guess(client: TestClient, forwarded: str) -> int:
            return client.get("/api/v1/me", headers={**bearer(f"rmt_{secrets.token_hex(8)}_x"),
                                                     "X-Forwarded-For": forwarded}).status_code

        # Behind the ingress, each phone is its own address: one that keeps failing is throttled alone.
        assert [guess(ingress, "203.0.113.5") for _ in range(4)] == [401, 401, 401, 429]
        assert guess(ingress, "198.51.100.7") == 401
        # From elsewhere the header is not believed: the connection's own address is throttled.
        assert [guess(outsider, f"198.51.100.{i}") for i in range(4)] == [401, 401, 401, 429]
        # Whatever else the proxy passes on is no address: one shared "invalid", throttled together, kept out of
        # the audit log (a review stored "<script>alert(1)</script>" there).
        assert [guess(ingress, f"<script>{i}</script>") for i in range(4)] == [401, 401, 401, 429]
        clients = {r["client"] for r in ingress.get("/api/v1/audit", headers=manager).json()}
        assert {"203.0.113.5", "198.51.100.7", "192.0.2.50", "invalid"} <= clients
        assert not {"10.9.0.7", "198.51.100.0", "198.51.100.1"} & clients
        assert not any("<" in c for c in clients)
    finally:
        app.state.pool.close()


def test_server_errors_and_early_refusals_are_measured(api, monkeypatch) -> None:
    # The guide alerts on road_detection_submissions_total{status="failed"}: a 500 and a 413 must count there
    # and in the latency histogram, like any other answer.
    client, _cfg, dsn = api
    dev = bearer(token(dsn, "device", "phone-5", device_id="phone-5"))

    def failed(code: str) -> float:
        return REGISTRY.get_sample_value("road_detection_submissions_total", {"status": "failed", "code": code}) or 0

    def timed() -> float:
        return REGISTRY.get_sample_value("road_api_latency_seconds_count",
                                         {"method": "POST", "route": "/api/v1/detections"}) or 0

    before = {code: failed(code) for code in ("413", "500")}
    before_500 = answered("POST", "/api/v1/detections", "500")
    calls = timed()
    r = client.post("/api/v1/detections", content=b"x" * 200_000, headers=dev)
    assert r.status_code == 413
    monkeypatch.setattr(api_detections, "_events", lambda *a: 1 / 0)  # a bug in the route
    crashing = TestClient(client.app, raise_server_exceptions=False)
    assert crashing.post("/api/v1/detections", json={}, headers=dev).status_code == 500
    assert failed("413") == before["413"] + 1 and failed("500") == before["500"] + 1
    assert timed() == calls + 2
    assert answered("POST", "/api/v1/detections", "500") == before_500 + 1  # the availability KPI's 5xx
    rows = client.get("/api/v1/audit", headers=bearer(token(dsn, "manager", "m"))).json()
    assert {("phone-5", 500), ("unchecked token", 413)} <= {(r["who"], r["status"]) for r in rows}


def answered(method: str, route: str, code: str) -> float:
    return REGISTRY.get_sample_value("road_api_responses_total", {"method": method, "route": route, "code": code}) or 0


def test_clients_cannot_invent_metric_labels_with_methods(api) -> None:
    # Any token is a method to the HTTP server; as a label each made a new series in every scrape for good.
    client = api[0]
    others = answered("other", "other", "405")  # a method no route takes: no route template either
    for i in range(3):
        assert client.request(f"FROB{i}", "/api/v1/defects").status_code == 405
    assert answered("other", "other", "405") == others + 3
    methods = {s.labels["method"] for m in REGISTRY.collect()
               if m.name in ("road_api_responses", "road_api_latency_seconds") for s in m.samples}
    assert not any(m.startswith("FROB") for m in methods)


def test_expired_and_rotated_tokens_stop_working_at_once_although_remembered(api) -> None:
    client, _cfg, dsn = api
    tok = token(dsn, "device", "phone-6", device_id="phone-6")
    other = token(dsn, "viewer", name="short-lived")
    for t in (tok, other):
        assert client.get("/api/v1/me", headers=bearer(t)).status_code == 200  # remembered (token_cache_s 60)
    with psycopg.connect(dsn, autocommit=True) as conn:
        token_id = conn.execute("SELECT id FROM api_tokens WHERE device_id = 'phone-6'").fetchone()[0]
        new, _ = auth.rotate_token(conn, token_id, timedelta(0), timedelta(days=90))  # no overlap
        conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'short-lived'")
    assert client.get("/api/v1/me", headers=bearer(tok)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(other)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(new)).status_code == 200


def test_argon2_checks_are_bounded_and_remembered(api, monkeypatch) -> None:
    client, _cfg, dsn = api
    tok = token(dsn, "viewer")
    calls = []
    real = auth.verify
    monkeypatch.setattr(auth, "verify", lambda conn, t: calls.append(t) or real(conn, t))
    for _ in range(5):
        assert client.get("/api/v1/me", headers=bearer(tok)).status_code == 200
    assert len(calls) == 1  # one argon2 check, then remembered
    gate = client.app.state.tokens.verifying
    assert gate._initial_value == 2  # api.max_concurrent_verifications


def test_a_revoked_token_stops_working_at_once(api) -> None:
    client, _cfg, dsn = api
    tok = token(dsn, "manager", name="leaver")
    assert client.get("/api/v1/me", headers=bearer(tok)).status_code == 200  # now remembered (token_cache_s 60)
    with psycopg.connect(dsn, autocommit=True) as conn:
        token_id = conn.execute("SELECT id FROM api_tokens WHERE name = 'leaver'").fetchone()[0]
        assert auth.revoke_tokens(conn, token_id=token_id) == 1
    assert client.get("/api/v1/me", headers=bearer(tok)).status_code == 401


def test_a_rotated_database_password_is_picked_up_without_a_restart(make_cfg, postgres) -> None:
    cfg = make_cfg()
    role = f"rot_{secrets.token_hex(3)}"
    dsn = cfg.database.resolve_dsn()
    db = dsn.rsplit("/", 1)[1]
    postgres._psql(f"CREATE ROLE {role} LOGIN PASSWORD 'first'")
    postgres._psql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}", db=db)
    cfg.database.dsn_file.write_text(f"postgresql://{role}:first@127.0.0.1:{postgres.port}/{db}")
    client = TestClient(create_app(cfg))
    viewer = bearer(token(dsn, "viewer"))
    try:
        assert client.get("/api/v1/devices", headers=viewer).status_code == 200
        # Rotate: new password in the database and in the DSN file; the old sessions end.
        postgres._psql(f"ALTER ROLE {role} PASSWORD 'second'")
        cfg.database.dsn_file.write_text(f"postgresql://{role}:second@127.0.0.1:{postgres.port}/{db}")
        postgres._psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        t0 = time.monotonic()
        assert wait_for(lambda: client.get("/api/v1/devices", headers=viewer).status_code == 200, timeout_s=20)
        assert time.monotonic() - t0 < 10
    finally:
        client.app.state.pool.close()
        postgres._psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")


@pytest.fixture
def fuzz_api(make_cfg):
    cfg = make_cfg(api={"rate_limit_per_hour": 100_000})
    client = TestClient(create_app(cfg))
    yield client, cfg.database.resolve_dsn()
    client.app.state.pool.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(body=st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), st.dictionaries(
    st.sampled_from(["class", "confidence", "position", "event_id", "seq", "size_m", "bbox"]),
    st.none() | st.integers() | st.floats() | st.text(max_size=10) | st.lists(st.integers(), max_size=5))),
    param=st.binary(max_size=12), route=st.sampled_from(["/api/v1/defects", "/api/v1/coverage",
                                                           "/api/v1/defects.geojson"]))
def test_fuzz_routes_never_answer_500(fuzz_api, body: bytes, param: bytes, route: str) -> None:
    client, dsn = fuzz_api
    headers = api_tokens(dsn)
    r = client.post("/api/v1/detections", content=body, headers=headers["device"])
    assert r.status_code in (202, 400, 403, 409, 413, 429), (r.status_code, body[:80])
    for name in ("class", "device", "since", "bbox", "status", "limit"):
        r = client.get(f"{route}?{name}={quote_from_bytes(param)}", headers=headers["viewer"])
        assert r.status_code < 500, (route, name, param, r.text[:200])


_tokens: dict[str, dict] = {}


def api_tokens(dsn: str) -> dict:
    if dsn not in _tokens:
        _tokens.clear()
        _tokens[dsn] = {"device": bearer(token(dsn, "device", "fuzz", device_id="fuzz")),
                        "viewer": bearer(token(dsn, "viewer"))}
    return _tokens[dsn]


@pytest.mark.services
def test_a_flood_without_tokens_leaves_the_api_answering_others(make_cfg) -> None:
    """48 clients at once without a token made the API answer everyone 503: every request's dependencies took
    a pooled database connection in one of the 40 worker threads, and once all threads waited for one, the
    requests holding one could not get a thread to finish and give it back, until the pool's timeout (5 s).
    Requests now wait for a turn in the event loop, which costs no thread."""
    import httpx

    from tests.server_fixtures import serve_api

    cfg = make_cfg()
    manager = bearer(token(cfg.database.resolve_dsn(), "manager", "day shift"))
    stop = threading.Event()
    flood: list[int] = []

    def knock(client: httpx.Client) -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                flood.append(client.get("/api/v1/defects").status_code)

    with serve_api(cfg) as url, httpx.Client(base_url=url, timeout=30) as client:
        threads = [threading.Thread(target=knock, args=(client,), daemon=True) for _ in range(64)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        answers, waits = [], []
        try:
            for _ in range(8):
                t0 = time.monotonic()
                answers.append(client.get("/api/v1/defects", headers=manager).status_code)
                waits.append(time.monotonic() - t0)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert 503 not in flood and set(flood) <= {403}, sorted(set(flood))
    assert answers == [200] * 8, (answers, [round(w, 2) for w in waits])
