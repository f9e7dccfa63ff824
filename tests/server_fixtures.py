"""Helpers for the fleet server's tests and benchmark: a config on the project's real services, the server
in-process (API via TestClient, ingest workers as threads), events and coverage records to send."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server import auth
from fleet_server.config import ServerConfig, parse
from fleet_server.ingest import IngestWorker
from fleet_server.store import Batch, store_batch
from roadmon_contract import topics
from roadmon_contract.geodesy import offset_latlon
from roadmon_contract.ids import uuid7

SHA = "ab" * 32
# The smallest thumbnail the server takes: a JPEG's start and end markers with nothing between (validate.py
# checks the markers, not the picture).
TINY_JPEG_B64 = "/9j/2Q=="


def server_config(dsn: str, mqtt_host: str, mqtt_port: int, user: str, password: str, tmp: Path,
                  devices: list[str] | None = None, **sections: dict) -> ServerConfig:
    """A config for one test: its own share group (so other tests' servers never take its messages) and,
    on the shared broker, subscriptions limited to its own devices."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "dsn").write_text(dsn)
    (tmp / "mqtt-password").write_text(password)
    data: dict = {
        "database": {"dsn_file": str(tmp / "dsn")},
        "mqtt": {"host": mqtt_host, "port": mqtt_port, "username": user, "password_file": str(tmp / "mqtt-password"),
                 "client_id_prefix": f"t-{secrets.token_hex(3)}", "session_expiry_s": 60},
        "ingest": {"share_group": f"t{secrets.token_hex(4)}", "devices": devices or ["+"], "batch_wait_s": 0.05},
        "models": {"dir": str(tmp / "models")},
    }
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return parse(data)


@pytest.fixture
def make_cfg(migrated_db: str, service_info, tmp_path: Path) -> Callable[..., ServerConfig]:
    """make_cfg(devices=[...], api={...}, ...) -> a migrated config on this test's own database (`fresh_db`)."""

    def make(devices: list[str] | None = None, **sections: dict) -> ServerConfig:
        return server_config(migrated_db, service_info.mqtt_host, service_info.mqtt_port, service_info.server_user,
                             service_info.server_password, tmp_path / "server", devices, **sections)

    return make


@pytest.fixture
def workers() -> Iterator[Callable[..., list[IngestWorker]]]:
    """start(cfg, n) -> n connected ingest workers in one share group; stopped after the test."""
    started: list[IngestWorker] = []

    def start(cfg: ServerConfig, n: int = 1) -> list[IngestWorker]:
        new = [IngestWorker(cfg, index=len(started) + i).start() for i in range(n)]
        started.extend(new)
        for w in new:
            assert w.wait_subscribed(30), "ingest worker did not connect and subscribe at the broker"
        return new

    yield start
    for w in started:
        w.stop()


def token(dsn: str, role: str, name: str = "tester", device_id: str | None = None) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if device_id is not None:
            conn.execute("INSERT INTO devices (id) VALUES (%s) ON CONFLICT DO NOTHING", (device_id,))
        return auth.create_token(conn, role, name, device_id)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(device: str, lat: float, lon: float, *, at: datetime | None = None, h: float = 2.0,
               seq: int = 0, cls: str = "pothole", severity: float = 0.5, **extra) -> dict:
    event = {
        "schema": "roadmon.event/1", "event_id": str(uuid7()), "device_id": device, "seq": seq,
        "captured_at": iso(at or datetime.now(UTC)), "class": cls, "confidence": 0.8,
        "position": {"lat": lat, "lon": lon, "h_accuracy_m": h},
        "vehicle": {"lat": lat - 0.0001, "lon": lon, "h_accuracy_m": 1.5, "speed_mps": 10.0, "heading_deg": 0.0},
        "size_m": {"width": 0.5, "length": 0.4}, "severity": severity, "frames": 12, "bbox": [10, 20, 110, 90],
        "model": {"name": "test", "version": "1", "sha256": SHA},
    }
    event.update(extra)
    return event


def make_coverage(device: str, line: list[tuple[float, float]], start: datetime, end: datetime,
                  detector_active: bool = True, half_width: float | None = None) -> dict:
    cov = {"schema": "roadmon.coverage/1", "coverage_id": str(uuid7()), "device_id": device,
           "started_at": iso(start), "ended_at": iso(end), "line": [[lon, lat] for lat, lon in line],
           "detector_active": detector_active, "model_sha256": SHA}
    if half_width is not None:
        cov["footprint_m"] = {"near": 3.0, "far": 25.0, "half_width": half_width}
    return cov


def store(cfg: ServerConfig, events: list[dict] = (), coverage: list[dict] = ()) -> None:
    """EVENTS and COVERAGE stored in one batch as an ingest worker stores them (no broker), received now."""
    now = datetime.now(UTC)
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        store_batch(conn, Batch(events=[(e, now) for e in events], coverage=[(c, now) for c in coverage]),
                    cfg.aggregate)


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """The point NORTH_M / EAST_M metres from (lat, lon)."""
    return offset_latlon(lat, lon, east_m, north_m)


class DeviceClient:
    """A device's MQTT connection: publishes under its own id and collects its acks."""

    def __init__(self, host: str, port: int, device_id: str, password: str) -> None:
        self.device_id = device_id
        self.acks: list[dict] = []
        self.ack_qos: set[int] = set()  # QoS of the acks as delivered (subscribed at 2: they keep what was sent)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{device_id}-{secrets.token_hex(2)}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(device_id, password)
        self.client.on_message = self._on_message
        subacked = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, codes, p: subacked.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(topics.ack(device_id), qos=2)
        assert subacked.wait(30), f"{device_id}: no SUBACK for its ack topic"

    def _on_message(self, client, userdata, msg) -> None:
        self.ack_qos.add(msg.qos)
        self.acks.append(json.loads(msg.payload))

    def publish(self, kind: str, payload: bytes | dict, topic: str | None = None, retain: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.client.publish(topic or f"{topics.PREFIX}/{self.device_id}/{kind}", body, qos=1, retain=retain)
        info.wait_for_publish(10)

    def acked_events(self) -> set[str]:
        return {i for a in list(self.acks) for i in a.get("event_ids", [])}

    def acked_coverage(self) -> set[str]:
        return {i for a in list(self.acks) for i in a.get("coverage_ids", [])}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def count(dsn: str, sql: str, params: tuple = ()) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def hours_ago(h: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=h)


@contextlib.contextmanager
def serve_api(cfg: ServerConfig) -> Iterator[str]:
    """The HTTP API of CFG on a free loopback port (uvicorn in a thread, as `fleet-server serve` runs it);
    yields its base URL."""
    import uvicorn

    from fleet_server.api import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the API server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
