"""The Python client SDK (clients/python, road-monitor-client): against the real server over HTTP (submit,
resend, refusals kept with their reason, 429 holding the queue, the offline queue of a phone in a tunnel
delivered in order once the server is reachable), and against a small local HTTP server for the answers the
real server never gives (captive portals, redirects, proxies' errors, a 202 that is not JSON)."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from fleet_server.config import ServerConfig
from tests.server_fixtures import count, make_cfg, serve_api, token

road_monitor_client = pytest.importorskip("road_monitor_client", reason="pip install -e clients/python "
                                                                        "(make install does)")
RoadMonitorAPI, Refused = road_monitor_client.RoadMonitorAPI, road_monitor_client.Refused
CredentialsRefused = road_monitor_client.CredentialsRefused

__all__ = ["make_cfg"]
POTHOLE = [{"bbox": [100, 150, 250, 300], "class": "pothole", "confidence": 0.87}]
GPS = (12.9716, 77.5946, 5.0)
ACCEPTED = (202, {"Content-Type": "application/json"}, json.dumps({"event_id": "e-1", "status": "queued"}))


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default queues go under the test's directory, never the user's."""
    monkeypatch.setenv(road_monitor_client.queue.DATA_DIR_ENV, str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def live(make_cfg) -> tuple[str, str, ServerConfig]:
    cfg = make_cfg(api={"rate_limit_per_hour": 5, "token_cache_s": 0})
    with serve_api(cfg) as url:
        yield url, cfg.database.resolve_dsn(), cfg


def dead_url() -> str:
    with socket.socket() as s:  # a port that nothing listens on: connection refused, like no network
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


class Scripted(ThreadingHTTPServer):
    """Answers each POST with the next of ANSWERS (status, headers, body); the last one repeats."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.answers: list[tuple[int, dict[str, str], str]] = [ACCEPTED]
        self.bodies: list[bytes] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: Scripted

    def do_POST(self) -> None:
        self.server.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        answers = self.server.answers
        status, headers, body = answers.pop(0) if len(answers) > 1 else answers[0]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def problem(status: int, detail: str, **headers: str) -> tuple[int, dict[str, str], str]:
    """An answer in the server's error shape."""
    return status, {"Content-Type": "application/json", **headers}, json.dumps({"detail": detail})


def queue_offline(queue: Path, n: int) -> None:
    """N submissions made in a tunnel, waiting in QUEUE."""
    with RoadMonitorAPI("rmt_any", dead_url(), queue_path=queue, max_attempts=1) as tunnel:
        for i in range(n):
            assert tunnel.submit_detections("phone-9", (48.1 + i * 1e-3, 11.5, 4.0), POTHOLE).status == "offline"


# --------------------------------------------------------------------------------------- the real server
@pytest.mark.services
def test_submit_resend_and_refusals(live, tmp_path: Path) -> None:
    url, dsn, _cfg = live
    key = token(dsn, "device", "phone-1", device_id="phone-1")
    when = datetime.now(UTC) - timedelta(seconds=3)
    with RoadMonitorAPI(key, f"{url}/v1", queue_path=tmp_path / "q.db") as api:
        first = api.submit_detections("phone-1", GPS, POTHOLE, image_bytes=None, timestamp=when)
        assert first.status == "queued" and first.event_id
        assert api.submit_detections("phone-1", GPS, POTHOLE, timestamp=when).status == "duplicate"
        with pytest.raises(Refused) as bad:
            api.submit_detections("phone-1", (95.0, 77.5946, 5.0), POTHOLE)
        assert bad.value.status_code == 400 and "gps.lat" in str(bad.value.detail)
        assert len(api.queue) == 0 and [r[1] for r in api.queue.refused()] == [400]
        # Put back (say, after a server fix): it waits again, and this server refuses it again.
        assert api.queue.requeue_refused() == 1 and len(api.queue) == 1 and api.queue.refused() == []
        assert api.flush() == {"queued": 0, "duplicate": 0, "refused": 1, "waiting": 0}
    assert count(dsn, "SELECT count(*) FROM sightings WHERE device_id = 'phone-1'") == 1
    # The platform's own id in device_id, as the guide's samples send it: that body is refused and set aside,
    # and the posts after it go through (a 403 kept it at the head of the queue, every later post behind it).
    with RoadMonitorAPI(key, f"{url}/v1", queue_path=tmp_path / "q3.db") as api:
        with pytest.raises(Refused) as platform_id:
            api.submit_detections("TP1A.220624.014", GPS, POTHOLE)
        assert platform_id.value.status_code == 400 and "device_id" in str(platform_id.value.detail)
        assert api.submit_detections("phone-1", (48.3, 11.5, 4.0), POTHOLE).status == "queued"
        assert len(api.queue) == 0
    # A wrong token is not the body's fault: the body stays queued for a client with a good token.
    with RoadMonitorAPI("rmt_00_wrong", f"{url}/v1", queue_path=tmp_path / "q2.db") as api:
        with pytest.raises(CredentialsRefused) as unauthorised:
            api.submit_detections("phone-1", (12.9, 77.5, 5.0), POTHOLE)
        assert unauthorised.value.status_code == 401
        assert len(api.queue) == 1 and api.queue.refused() == []
    with RoadMonitorAPI(key, f"{url}/v1", queue_path=tmp_path / "q2.db") as api:
        assert api.flush() == {"queued": 1, "duplicate": 0, "refused": 0, "waiting": 0}


@pytest.mark.services
def test_a_phone_in_a_tunnel_loses_nothing(live, tmp_path: Path) -> None:
    url, dsn, _cfg = live
    key = token(dsn, "device", "phone-2", device_id="phone-2")
    start = datetime.now(UTC) - timedelta(minutes=1)
    # The guide's constructor, without queue_path: the queue is a file on disk all the same.
    with RoadMonitorAPI(key, dead_url(), max_attempts=2, backoff_s=0.01) as tunnel:
        for i in range(4):
            receipt = tunnel.submit_detections("phone-2", (48.1 + i * 1e-3, 11.5, 4.0), POTHOLE,
                                               timestamp=start + timedelta(seconds=i))
            assert receipt.status == "offline" and "ConnectError" in receipt.error
        assert len(tunnel.queue) == 4
        queue = tunnel.queue.path
    # The app restarts out of the tunnel: a new client on the same queue file sends the backlog, in order.
    with RoadMonitorAPI(key, f"{url}/v1", queue_path=queue) as api:
        assert api.flush() == {"queued": 4, "duplicate": 0, "refused": 0, "waiting": 0}
        assert len(api.queue) == 0
    with httpx.Client() as http:
        rows = http.get(f"{url}/api/v1/audit", headers={"Authorization": f"Bearer {token(dsn, 'manager')}"}).json()
    assert [r["status"] for r in rows if r["who"] == "phone-2"] == [202] * 4
    order = [r[0] for r in _rows(dsn, "SELECT captured_at FROM sightings WHERE device_id = 'phone-2' "
                                      "ORDER BY received_at, captured_at")]
    assert order == sorted(order) and len(order) == 4


@pytest.mark.services
def test_429_holds_the_queue_until_retry_after(live, tmp_path: Path) -> None:
    url, dsn, _cfg = live
    key = token(dsn, "device", "phone-3", device_id="phone-3")
    with RoadMonitorAPI(key, f"{url}/v1", queue_path=tmp_path / "q.db", max_attempts=3) as api:
        for i in range(5):  # the server allows 5 an hour here
            assert api.submit_detections("phone-3", (48.2 + i * 1e-3, 11.5, 4.0), POTHOLE).status == "queued"
        began = time.monotonic()
        limited = api.submit_detections("phone-3", (48.3, 11.5, 4.0), POTHOLE)
        assert time.monotonic() - began < 5  # one request, no waiting in the app's thread
        assert limited.status == "rate_limited" and limited.not_before > datetime.now(UTC) + timedelta(seconds=60)
        assert api.flush() == {"queued": 0, "duplicate": 0, "refused": 0, "waiting": 1}  # sends nothing
        assert len(api.queue) == 1
    manager = {"Authorization": f"Bearer {token(dsn, 'manager')}"}
    with httpx.Client() as http:
        rows = http.get(f"{url}/api/v1/audit", headers=manager).json()
    assert sum(r["status"] == 429 for r in rows if r["who"] == "phone-3") == 1


# ------------------------------------------------------------------------------ the default queue location
def test_the_default_queue_is_a_file_per_server_that_outlives_the_app(data_dir: Path) -> None:
    url = dead_url()
    with RoadMonitorAPI("rmt_any", url, max_attempts=1) as api:
        assert api.submit_detections("phone-9", GPS, POTHOLE).status == "offline"
        assert Path(api.queue.path).parent == data_dir and api.queue.path.endswith(".db")
    with RoadMonitorAPI("rmt_any", url + "/") as restarted:  # the app restarts: the submission is there
        assert len(restarted.queue) == 1
    assert Path(api.queue.path).stat().st_mode & 0o077 == 0  # positions and photos: this user's only
    with RoadMonitorAPI("rmt_any", "http://127.0.0.1:9/other/v1") as other_server:
        assert len(other_server.queue) == 0 and other_server.queue.path != restarted.queue.path
    with RoadMonitorAPI("rmt_any", url, queue_path=":memory:") as in_memory:  # only when asked for
        assert in_memory.queue.path == ":memory:" and len(in_memory.queue) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the XDG location is Linux's")
def test_the_default_data_dir_is_the_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(road_monitor_client.queue.DATA_DIR_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert road_monitor_client.default_queue_path("https://x/v1").parent == tmp_path / "xdg" / "road-monitor"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert road_monitor_client.queue.user_data_dir() == tmp_path / ".local" / "share" / "road-monitor"


# -------------------------------------------------------------------------- answers that are not the server's
@pytest.mark.parametrize("answer", [
    (200, {"Content-Type": "text/html"}, "<html>Welcome to the station's Wi-Fi</html>"),
    (302, {"Location": "http://portal.example/login"}, ""),
    problem(404, "Not Found"),  # a wrong base_url
    (408, {}, ""),
    (400, {"Content-Type": "text/html"}, "<html>400 Bad Request (proxy)</html>"),
    (413, {"Content-Type": "text/html"}, "<html>413 Request Entity Too Large (proxy)</html>"),
    (202, {"Content-Type": "text/plain"}, "OK"),  # a 202 that is not JSON: not confirmed
    (202, {"Content-Type": "application/json"}, "[]"),
    (409, {"Content-Type": "text/html"}, "<html>conflict</html>"),
], ids=lambda a: f"{a[0]}-{a[2][:12]}")
def test_answers_that_are_not_the_servers_keep_the_body_queued(scripted: Scripted, tmp_path: Path,
                                                                answer: tuple) -> None:
    scripted.answers = [answer, ACCEPTED]
    with RoadMonitorAPI("rmt_any", scripted.url, queue_path=tmp_path / "q.db", max_attempts=3,
                        backoff_s=0.01) as api:
        receipt = api.submit_detections("phone-9", GPS, POTHOLE)  # never raises
        assert receipt.status == "offline" and receipt.error.startswith(f"HTTP {answer[0]}")
        assert len(api.queue) == 1 and api.queue.refused() == [] and len(scripted.bodies) == 1
        assert api.flush() == {"queued": 1, "duplicate": 0, "refused": 0, "waiting": 0}
    assert scripted.bodies[0] == scripted.bodies[1]


def test_a_202_that_is_not_json_says_why(scripted: Scripted, tmp_path: Path) -> None:
    scripted.answers = [(202, {"Content-Type": "application/json"}, "{not json")]
    with RoadMonitorAPI("rmt_any", scripted.url, queue_path=tmp_path / "q.db") as api:
        receipt = api.submit_detections("phone-9", GPS, POTHOLE)
    assert receipt.status == "offline" and receipt.event_id is None
    assert "not the server's JSON" in receipt.error and "{not json" in receipt.error


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_stops_the_flush_and_loses_nothing(scripted: Scripted, tmp_path: Path, status: int) -> None:
    queue = tmp_path / "q.db"
    queue_offline(queue, 4)
    scripted.answers = [problem(status, "invalid token")]
    with RoadMonitorAPI("rmt_expired", scripted.url, queue_path=queue) as api:
        with pytest.raises(CredentialsRefused) as refused:
            api.flush()
        assert refused.value.status_code == status and refused.value.detail == "invalid token"
        assert len(scripted.bodies) == 1 and len(api.queue) == 4 and api.queue.refused() == []
        with pytest.raises(CredentialsRefused):
            api.submit_detections("phone-9", GPS, POTHOLE)
        assert len(api.queue) == 5
    scripted.answers = [ACCEPTED]
    with RoadMonitorAPI("rmt_refreshed", scripted.url, queue_path=queue) as api:
        assert api.flush() == {"queued": 5, "duplicate": 0, "refused": 0, "waiting": 0}


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_refusal_of_the_body_is_kept_aside_and_can_be_requeued(scripted: Scripted, tmp_path: Path,
                                                                  status: int) -> None:
    queue = tmp_path / "q.db"
    queue_offline(queue, 2)
    scripted.answers = [problem(status, "detections.0.class: invalid"), ACCEPTED]
    with RoadMonitorAPI("rmt_any", scripted.url, queue_path=queue) as api:
        # The refused body is set aside; the one behind it still goes.
        assert api.flush() == {"queued": 1, "duplicate": 0, "refused": 1, "waiting": 0}
        assert [row[1:] for row in api.queue.refused()] == [(status, '"detections.0.class: invalid"')]
        assert api.queue.requeue_refused() == 1 and api.queue.refused() == [] and len(api.queue) == 1
        assert api.flush() == {"queued": 1, "duplicate": 0, "refused": 0, "waiting": 0}
    assert scripted.bodies[0] == scripted.bodies[2]


# ------------------------------------------------------------------------------------ 429 and Retry-After
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_returns_at_once_and_holds_the_queue(scripted: Scripted, tmp_path: Path, form: str) -> None:
    # The date is made when the test runs: the whole suite may run for minutes after collection.
    retry_after = "3600" if form == "seconds" else format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    scripted.answers = [problem(429, "rate limited", **{"Retry-After": retry_after})]
    began = time.monotonic()
    with RoadMonitorAPI("rmt_any", scripted.url, queue_path=tmp_path / "q.db") as api:
        receipt = api.submit_detections("phone-9", GPS, POTHOLE)
        assert time.monotonic() - began < 5 and len(scripted.bodies) == 1  # no waiting, no retry in the call
        in_an_hour = datetime.now(UTC) + timedelta(hours=1)
        assert receipt.status == "rate_limited" and abs(receipt.not_before - in_an_hour) < timedelta(minutes=1)
        assert api.flush() == {"queued": 0, "duplicate": 0, "refused": 0, "waiting": 1}
        assert api.submit_detections("phone-9", GPS, POTHOLE).status == "rate_limited"
    with RoadMonitorAPI("rmt_any", scripted.url, queue_path=tmp_path / "q.db") as restarted:
        assert restarted.flush()["waiting"] == 2 and restarted.queue.not_before() is not None
    assert len(scripted.bodies) == 1  # nothing more was sent before the server's time


def test_flush_sends_once_retry_after_has_passed(scripted: Scripted, tmp_path: Path) -> None:
    scripted.answers = [problem(429, "rate limited", **{"Retry-After": "1"}), ACCEPTED]
    with RoadMonitorAPI("rmt_any", scripted.url, queue_path=tmp_path / "q.db") as api:
        receipt = api.submit_detections("phone-9", GPS, POTHOLE)
        assert receipt.status == "rate_limited"
        assert api.flush()["waiting"] == 1 and len(scripted.bodies) == 1
        time.sleep(max(0.0, (receipt.not_before - datetime.now(UTC)).total_seconds()) + 0.1)
        assert api.flush() == {"queued": 1, "duplicate": 0, "refused": 0, "waiting": 0}


def test_5xx_is_retried_in_the_call_unless_the_server_says_when(scripted: Scripted, tmp_path: Path) -> None:
    scripted.answers = [problem(502, "bad gateway"), ACCEPTED]
    with RoadMonitorAPI("rmt_any", scripted.url, queue_path=tmp_path / "q.db", backoff_s=0.01) as api:
        assert api.submit_detections("phone-9", GPS, POTHOLE).status == "queued"
        assert len(scripted.bodies) == 2
        scripted.answers = [problem(503, "maintenance", **{"Retry-After": "120"})]
        receipt = api.submit_detections("phone-9", GPS, POTHOLE)
        assert receipt.status == "offline" and receipt.not_before is not None and len(scripted.bodies) == 3


def _rows(dsn: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize("tz", ["Australia/Sydney", "America/Sao_Paulo", "UTC"])
def test_a_naive_timestamp_is_utc_whatever_the_phones_zone(tz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's sample passes `datetime.utcnow()`; the client took a naive time for local time and moved a
    Sydney phone's sightings 11 h back, a Sao Paulo one's 3 h into the future, all accepted."""
    from road_monitor_client.client import _encode

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        naive = datetime(2026, 12, 7, 5, 34, 58, 126000)
        body = json.loads(_encode("phone-1", GPS, POTHOLE, None, naive))
        assert body["timestamp"] == "2026-12-07T05:34:58.126Z"
        zoned = datetime(2026, 12, 7, 16, 34, 58, 126000, tzinfo=ZoneInfo("Australia/Sydney"))
        assert json.loads(_encode("phone-1", GPS, POTHOLE, None, zoned))["timestamp"] == "2026-12-07T05:34:58.126Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
