"""Outages and device state: PostGIS away (nothing acked until committed), broker restarts, status and the
Last Will, command results, the CLI on real services."""

from __future__ import annotations

import hashlib
import json

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from fleet_server.cli import app
from roadmon_contract import topics
from tests.onnx_models import tiny_detector
from tests.server_fixtures import DeviceClient, count, make_cfg, make_event, server_config, wait_for, workers

pytestmark = pytest.mark.services  # every test here runs against the local PostGIS/Mosquitto

__all__ = ["make_cfg", "workers"]


def test_nothing_acked_while_postgis_is_down(make_cfg, workers, mqtt_device, service_info, fresh_db) -> None:
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device], ingest={"db_retry_max_s": 0.5})
    dsn_file = cfg.database.dsn_file
    dsn_file.write_text("postgresql://roadmon:x@127.0.0.1:9/nowhere?connect_timeout=1")  # nothing listens on 9
    [worker] = workers(cfg)
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    try:
        event = make_event(device, 48.1, 11.5)
        dev.publish("event", event)
        assert wait_for(lambda: worker.stats["db_errors"] >= 2)
        assert dev.acked_events() == set()
        dsn_file.write_text(fresh_db)  # PostGIS is back
        assert wait_for(lambda: event["event_id"] in dev.acked_events())
        assert count(fresh_db, "SELECT count(*) FROM sightings") == 1
    finally:
        dev.close()


def test_worker_restart_loses_nothing(make_cfg, mqtt_device, service_info, fresh_db) -> None:
    """A lone worker away for a while with its session kept (mqtt.leave_group_on_stop false): the broker keeps
    its share until it is back."""
    from fleet_server.ingest import IngestWorker

    device, password = mqtt_device()
    cfg = make_cfg(devices=[device], mqtt={"leave_group_on_stop": False})
    worker = IngestWorker(cfg).start()
    assert worker.wait_subscribed(30)  # the persistent session now holds the subscription
    worker.stop()
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    again = IngestWorker(cfg)
    try:
        event = make_event(device, 48.1, 11.5)
        dev.publish("event", event)  # returns on the broker's PUBACK: the broker holds it for the worker
        assert count(fresh_db, "SELECT count(*) FROM sightings") == 0
        again.start()
        assert wait_for(lambda: event["event_id"] in dev.acked_events())
        assert count(fresh_db, "SELECT count(*) FROM sightings") == 1
    finally:
        dev.close()
        again.stop()


def test_worker_survives_broker_restart(private_broker, fresh_db, tmp_path) -> None:
    from fleet_server.ingest import IngestWorker
    from fleet_server.metrics import INGEST_BROKER_CONNECTED
    from fleet_server.migrate import migrate

    migrate(fresh_db)
    mq = private_broker()
    mq.add_device("veh-r", "pw-r")
    cfg = server_config(fresh_db, "127.0.0.1", mq.port, "roadmon-server", mq.server_password, tmp_path,
                        mqtt={"reconnect_min_s": 1.0, "reconnect_max_s": 2.0})
    worker = IngestWorker(cfg).start()
    try:
        assert worker.wait_subscribed(30)
        dev = DeviceClient("127.0.0.1", mq.port, "veh-r", "pw-r")
        first = make_event("veh-r", 48.1, 11.5)
        dev.publish("event", first)
        assert wait_for(lambda: first["event_id"] in dev.acked_events())
        dev.close()
        connected = INGEST_BROKER_CONNECTED.labels(client=worker.client_id)
        assert connected._value.get() == 1
        mq.kill()  # a dead broker sends no Last Will: this gauge is what the alert RoadIngestBrokerUnreachable sees
        assert wait_for(lambda: not worker.connected.is_set(), timeout_s=10)
        assert connected._value.get() == 0
        mq.up()
        assert worker.wait_subscribed(30), "worker did not reconnect and subscribe again"
        assert connected._value.get() == 1
        dev = DeviceClient("127.0.0.1", mq.port, "veh-r", "pw-r")
        second = make_event("veh-r", 48.2, 11.5)
        dev.publish("event", second)
        assert wait_for(lambda: second["event_id"] in dev.acked_events())
        dev.close()
        assert count(fresh_db, "SELECT count(*) FROM sightings") == 2
    finally:
        worker.stop()


def test_status_last_will_and_command_results(make_cfg, workers, mqtt_device, service_info, fresh_db,
                                              monkeypatch) -> None:
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device])
    workers(cfg)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"will-{device}", protocol=mqtt.MQTTv5)
    client.username_pw_set(device, password)
    client.will_set(topics.status(device), json.dumps({"state": "offline"}), qos=1, retain=True)
    commands: list[mqtt.MQTTMessage] = []
    client.on_message = lambda c, u, m: commands.append(m)
    client.connect(service_info.mqtt_host, service_info.mqtt_port, keepalive=5)
    client.loop_start()
    client.subscribe(f"{topics.PREFIX}/{device}/cmd/#", qos=1)
    status = {"state": "online", "device_id": device, "queue_depth": 7, "inference_ms": 42.0, "fps": 9.5,
              "fix": {"lat": 48.1, "lon": 11.5, "mode": 3}, "version": "0.1.0"}
    client.publish(topics.status(device), json.dumps(status), qos=1, retain=True).wait_for_publish(5)

    def state() -> tuple:
        with psycopg.connect(fresh_db) as conn:
            return conn.execute("SELECT state, queue_depth, inference_ms FROM devices WHERE id = %s",
                                (device,)).fetchone() or (None, None, None)

    assert wait_for(lambda: state() == ("online", 7, 42.0)), state()
    # The CLI on the same config: send a command, the device answers, the answer is stored and listed.
    monkeypatch.setenv("ROADMON_DATABASE_DSN", fresh_db)
    monkeypatch.setenv("ROADMON_MQTT_PASSWORD", service_info.server_password)
    conf = cfg.database.dsn_file.parent / "server.toml"
    conf.write_text(f'[mqtt]\nport = {service_info.mqtt_port}\n[models]\ndir = "{cfg.models.dir}"\n')
    runner = CliRunner()
    sent = runner.invoke(app, ["-c", str(conf), "cmd", "send", device, "config-reload", '{"n": 1}'])
    assert sent.exit_code == 0, sent.output
    assert wait_for(lambda: any(m.topic.endswith("/cmd/config-reload") for m in commands))
    client.publish(topics.cmd_result(device, "config-reload"), json.dumps({"ok": True, "n": 1}),
                   qos=1).wait_for_publish(5)
    assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM command_results") == 1)
    listed = runner.invoke(app, ["-c", str(conf), "cmd", "results", device, "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["payload"] == {"ok": True, "n": 1}
    # A model update: staged by sha256, announced with the URL the device fetches it from.
    model = conf.parent / "candidate.onnx"
    model.write_bytes(tiny_detector())
    pushed = runner.invoke(app, ["-c", str(conf), "model", "push", device, str(model), "--url-base",
                                 "https://fleet.example.org"])
    assert pushed.exit_code == 0, pushed.output
    assert wait_for(lambda: any(m.topic.endswith("/cmd/model-update") for m in commands))
    update = json.loads(next(m for m in commands if m.topic.endswith("/cmd/model-update")).payload)
    sha = hashlib.sha256(tiny_detector()).hexdigest()
    assert update["sha256"] == sha and update["url"].startswith(f"https://fleet.example.org/api/v1/models/{sha}.onnx?")
    assert (cfg.models.dir / f"{sha}.onnx").read_bytes() == tiny_detector()
    # Vanish without a goodbye: the broker publishes the Last Will, the device turns offline.
    client.loop_stop()
    client.socket().close()
    assert wait_for(lambda: state()[0] == "offline", timeout_s=20), state()


def test_api_connections_postgresql_closed_are_replaced_not_a_503(make_cfg) -> None:
    # A PostgreSQL restart closes every pooled connection; the next requests got 503 "database unavailable"
    # until each dead connection had been handed out once.
    from fleet_server.db import make_pool

    cfg = make_cfg()
    pool = make_pool(cfg.database, name="restart-test")
    try:
        pool.wait(10)
        with pool.connection() as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        for _ in range(3):
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_health_calls_a_worker_up_once_its_subscriptions_are_acknowledged() -> None:
    """/health said ok between a worker's connection and the broker's SUBACK: what arrived then reached no worker
    (a resend sent as a restored server's health turned ok; a test's first event, once, in a loaded run)."""
    import threading
    from types import SimpleNamespace

    from fleet_server.health import broker_check

    def worker(connected: bool, subscribed: bool) -> SimpleNamespace:
        w = SimpleNamespace(connected=threading.Event(), subscribed=threading.Event())
        if connected:
            w.connected.set()
        if subscribed:
            w.subscribed.set()
        return w

    assert broker_check([worker(True, True), worker(True, True)], "127.0.0.1", 1) == "ok"
    assert broker_check([worker(True, True), worker(True, False)], "127.0.0.1", 1) == \
        "1 of 2 workers not subscribed yet"
    assert broker_check([worker(False, False), worker(True, False)], "127.0.0.1", 1) == "1 of 2 workers disconnected"
