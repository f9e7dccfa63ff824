"""The HTTP API under hostile input: body caps, NUL in parameters, bodies that break json.loads, throttled
token guessing, immediate revocation, invalid bodies counting against the rate, a rotated database password,
and a fuzz of the routes (never a 500)."""

from __future__ import annotations

import json
import secrets
import time
from urllib.parse import quote_from_bytes

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_server import auth
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


def test_invalid_bodies_use_up_the_hourly_rate(api) -> None:
    client, _cfg, dsn = api
    dev = bearer(token(dsn, "device", "phone-3", device_id="phone-3"))
    for _ in range(5):
        assert client.post("/api/v1/detections", content=b"{nope", headers=dev).status_code == 400
    r = client.post("/api/v1/detections", json=make_event("phone-3", 48.1, 11.5), headers=dev)
    assert r.status_code == 429 and r.headers["retry-after"]
    assert count(dsn, "SELECT count(*) FROM rejected WHERE device_id = 'phone-3'") == 5


def test_failed_authentication_is_throttled_per_source_address(api) -> None:
    client, _cfg, dsn = api
    good = bearer(token(dsn, "viewer"))
    for _ in range(10):
        assert client.get("/api/v1/me", headers=bearer(f"rmt_{secrets.token_hex(8)}_x")).status_code == 401
    r = client.get("/api/v1/me", headers=bearer("rmt_0000_guess"))
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    # The address is throttled, even with a good token (the guard cannot tell before the argon2 check)...
    assert client.get("/api/v1/me", headers=good).status_code == 429
    # ...while another address is not.
    other = TestClient(client.app, client=("10.1.2.3", 5000))
    assert other.get("/api/v1/me", headers=good).status_code == 200
    assert "road_api_auth_throttled_total" in client.get("/metrics").text


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
