"""A database that stops answering without closing anything (a frozen host, a network partition): the probes and
the scrape answer within seconds, and `migrate` gives up like every other command (an operations engineer's
finding: /health and /metrics gave no answer for minutes, `migrate` and `serve`'s start waited for ever)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from fleet_server.api import create_app
from tests.server_fixtures import make_cfg

__all__ = ["make_cfg"]


class FreezingProxy:
    """Forwards TCP to a server until `freeze()`: from then on it holds every byte, both ways, and closes nothing."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.target)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        while data := src.recv(65536):
            while self.frozen.is_set():
                time.sleep(0.1)
            dst.sendall(data)


@pytest.mark.services
def test_health_and_metrics_answer_while_the_database_is_frozen(make_cfg) -> None:
    cfg = make_cfg(database={"pool_min": 2})
    real = cfg.database.resolve_dsn()
    where = urlsplit(real)
    proxy = FreezingProxy(where.hostname, where.port)
    cfg.database.dsn_file.write_text(real.replace(f"{where.hostname}:{where.port}", f"127.0.0.1:{proxy.port}"))
    client = TestClient(create_app(cfg))
    try:
        assert client.get("/health").json()["database"] == "ok"
        assert "road_device_metrics_age_seconds 0.0" in client.get("/metrics").text
        proxy.freeze()  # the pool's open connections now wait on sockets that never answer
        for _ in range(2):
            started = time.monotonic()
            r = client.get("/health")
            assert r.status_code == 503 and r.json()["database"] == "unreachable"
            assert time.monotonic() - started < 6
            started = time.monotonic()
            r = client.get("/metrics")
            assert r.status_code == 200 and "road_device_metrics_age_seconds" in r.text  # the last figures read
            assert time.monotonic() - started < 6
    finally:
        proxy.frozen.clear()
        client.app.state.pool.close()


def silent_database(tmp_path: Path, connect_timeout_s: float) -> Path:
    """A server config whose database accepts connections and never answers."""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: silent.accept()[0], None)), daemon=True).start()
    (tmp_path / "dsn").write_text(f"postgresql://roadmon:x@127.0.0.1:{silent.getsockname()[1]}/roadmon")
    conf = tmp_path / "server.toml"
    conf.write_text(f'[database]\ndsn_file = "{tmp_path / "dsn"}"\nconnect_timeout_s = {connect_timeout_s}\n')
    return conf


@pytest.mark.parametrize(("command", "connect_timeout_s"), [("migrate", 2), ("device ls", 0.5)])
def test_commands_give_up_on_a_database_that_accepts_and_never_answers(tmp_path: Path, command: str,
                                                                        connect_timeout_s: float) -> None:
    # 0.5 s: truncated to libpq's whole seconds it was 0, "wait for ever" (an outside review's finding).
    conf = silent_database(tmp_path, connect_timeout_s)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fleet_server", "-c", str(conf), *command.split()],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert time.monotonic() - started < 30 and "timeout" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.services
def test_an_ingest_process_is_not_ready_while_its_database_does_not_answer(make_cfg) -> None:
    """An ingest process's /health said "ok" with its database unreachable or frozen, as long as no message came
    to fail on (an operator's re-test)."""
    from fleet_server.health import DatabaseProbe, ingest_process_problem

    cfg = make_cfg()
    real = cfg.database.resolve_dsn()
    where = urlsplit(real)
    proxy = FreezingProxy(where.hostname, where.port)
    cfg.database.dsn_file.write_text(real.replace(f"{where.hostname}:{where.port}", f"127.0.0.1:{proxy.port}"))
    subscribed = type("Worker", (), {"connected": threading.Event(), "subscribed": threading.Event(),
                                     "stalled_s": lambda self: 0.0, "waiting": lambda self: 0})()
    subscribed.connected.set()
    subscribed.subscribed.set()
    assert ingest_process_problem([subscribed], 60.0, DatabaseProbe(cfg.database, every_s=0)) is None
    proxy.freeze()
    try:
        started = time.monotonic()
        assert ingest_process_problem([subscribed], 60.0, DatabaseProbe(cfg.database, every_s=0)) == \
            "database: unreachable"
        assert time.monotonic() - started < 6
    finally:
        proxy.frozen.clear()
