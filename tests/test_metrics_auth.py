"""Who may scrape /metrics: with metrics.token_file set only whoever sends its bearer token (the API's route and
an ingest process's metrics port alike), a rotated token without a restart, a vanished file refusing everyone,
and a start that names a token file that is not there. Unset, /metrics stays open as the guide's Prometheus
configuration expects."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server.api import create_app
from fleet_server.config import ConfigError, MetricsConfig
from fleet_server.metrics_auth import serve_metrics
from tests.server_fixtures import make_cfg

__all__ = ["make_cfg"]


def bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


@pytest.mark.services
def test_the_api_metrics_need_the_token_once_it_is_set(make_cfg, tmp_path: Path) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text("first-secret\n")
    client = TestClient(create_app(make_cfg(metrics={"token_file": str(token_file)})))
    try:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert "metrics.token_file" in refused.text and "road_" not in refused.text
        assert client.get("/metrics", headers=bearer("wrong")).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Basic Zmlyc3Qtc2VjcmV0"}).status_code == 401
        assert "road_detection_submissions" in client.get("/metrics", headers=bearer("first-secret")).text
        token_file.write_text("second-secret")  # rotated: no restart
        assert client.get("/metrics", headers=bearer("first-secret")).status_code == 401
        assert client.get("/metrics", headers=bearer("second-secret")).status_code == 200
        token_file.unlink()  # gone: nobody, rather than everybody
        assert client.get("/metrics", headers=bearer("second-secret")).status_code == 401
        assert client.get("/health").status_code in (200, 503)  # probes never need the token
    finally:
        client.app.state.pool.close()


@pytest.mark.services
def test_without_a_token_the_api_metrics_answer_anyone(make_cfg) -> None:
    client = TestClient(create_app(make_cfg()))
    try:
        assert "road_detection_submissions" in client.get("/metrics").text
    finally:
        client.app.state.pool.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, tok: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=bearer(tok) if tok else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_an_ingest_metrics_port_needs_the_token_but_its_probe_does_not(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text("ingest-secret")
    port = _free_port()
    server = serve_metrics(MetricsConfig(token_file=token_file), port, "127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port}"
        assert _get(f"{base}/metrics")[0] == 401
        assert _get(f"{base}/metrics", "nope")[0] == 401
        status, body = _get(f"{base}/metrics", "ingest-secret")
        assert status == 200 and "road_ingest_messages" in body
        assert _get(f"{base}/health") == (200, "ok\n")  # the kubelet's liveness probe cannot send a secret
    finally:
        server.shutdown()


def test_a_half_open_connection_does_not_hold_the_probe(tmp_path: Path) -> None:
    """One connection that sends half a request and waits (a stalled scrape, a scanner) held the one-at-a-time
    server: /health timed out until the kubelet restarted the ingest process."""
    port = _free_port()
    server = serve_metrics(MetricsConfig(), port, "127.0.0.1")
    stalled = socket.create_connection(("127.0.0.1", port))
    try:
        stalled.sendall(b"GET /metr")
        assert _get(f"http://127.0.0.1:{port}/health") == (200, "ok\n")
        assert _get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    finally:
        stalled.close()
        server.shutdown()


def test_an_ingest_process_whose_token_file_is_missing_does_not_start(tmp_path: Path) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text('[metrics]\ntoken_file = "no-such-token"\n')
    done = subprocess.run([sys.executable, "-m", "fleet_server", "-c", str(conf), "ingest", "--metrics-port",
                           str(_free_port())], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no-such-token" in done.stderr and "no such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_empty_token_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"metrics\.token_file .*empty"):
        MetricsConfig(token_file=tmp_path / "empty").resolve_token()
