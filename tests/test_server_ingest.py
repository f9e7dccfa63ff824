"""MQTT ingest on the real broker and PostGIS: store, ack after commit, idempotency, dead letters, two workers."""

from __future__ import annotations

import json
import secrets

import psycopg
import pytest
from prometheus_client import REGISTRY

from fleet_server.migrate import available, migrate
from tests.server_fixtures import DeviceClient, count, make_cfg, make_coverage, make_event, wait_for, workers

pytestmark = pytest.mark.services  # every test here runs against the local PostGIS/Mosquitto

__all__ = ["make_cfg", "workers"]


def test_migrate_is_idempotent(fresh_db: str) -> None:
    first = migrate(fresh_db)
    assert [m.version for m in first] == [m.version for m in available()]
    assert migrate(fresh_db) == []
    assert count(fresh_db, "SELECT max(version) FROM schema_version") == available()[-1].version


def test_event_stored_acked_and_deduplicated(make_cfg, workers, mqtt_device, service_info, fresh_db) -> None:
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device])
    [worker] = workers(cfg)
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    batches, seconds = _batch_seconds()
    queued, duplicate = _submissions("queued"), _submissions("duplicate")
    try:
        event = make_event(device, 48.1, 11.5)
        dev.publish("event", event)
        assert wait_for(lambda: event["event_id"] in dev.acked_events())
        assert count(fresh_db, "SELECT count(*) FROM sightings WHERE event_id = %s", (event["event_id"],)) == 1
        # Each stored batch's transaction time is in road_ingest_batch_seconds: milliseconds here (under 0.8 s
        # on average even on a loaded machine).
        now_batches, now_seconds = _batch_seconds()
        assert now_batches > batches and 0 < now_seconds - seconds < 0.8 * (now_batches - batches)
        # The same event again: still one row, but acked again (the agent may have missed the first ack).
        dev.acks.clear()
        dev.publish("event", event)
        assert wait_for(lambda: event["event_id"] in dev.acked_events())
        assert count(fresh_db, "SELECT count(*) FROM sightings") == 1
        assert count(fresh_db, "SELECT count(*) FROM defects") == 1
        cov = make_coverage(device, [(48.1, 11.5), (48.101, 11.5)], *_times())
        dev.publish("coverage", cov)
        assert wait_for(lambda: cov["coverage_id"] in dev.acked_coverage())
        assert count(fresh_db, "SELECT count(*) FROM coverage") == 1
        assert dev.ack_qos == {1}  # the contract's QoS for acks
        assert worker.stats["batches"] == _batch_seconds()[0] - batches  # each stored batch counted once
        assert worker.stats["stored"] == 1 and worker.stats["duplicates"] == 1
        # The guide's "Detections Per Hour" panel reads road_detection_submissions_total: vehicles count there too.
        assert (_submissions("queued") - queued, _submissions("duplicate") - duplicate) == (1, 1)
    finally:
        dev.close()


def _batch_seconds() -> tuple[float, float]:
    """(count, sum) of road_ingest_batch_seconds."""
    return (REGISTRY.get_sample_value("road_ingest_batch_seconds_count") or 0.0,
            REGISTRY.get_sample_value("road_ingest_batch_seconds_sum") or 0.0)


def _submissions(status: str) -> float:
    return REGISTRY.get_sample_value("road_detection_submissions_total", {"status": status, "code": "mqtt"}) or 0.0


def _times():
    from tests.server_fixtures import hours_ago

    return hours_ago(0.1), hours_ago(0.09)


def test_malformed_messages_become_rejected_rows(make_cfg, workers, mqtt_device, service_info, fresh_db) -> None:
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device], ingest={"max_message_bytes": 50_000})
    workers(cfg)
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    failed = _submissions("failed")
    try:
        bad_schema = make_event(device, 48.1, 11.5)
        del bad_schema["confidence"]
        nan_text = json.dumps(make_event(device, 48.1, 11.5)).replace('"confidence": 0.8', '"confidence": NaN')
        huge = make_event(device, 48.1, 11.5, thumbnail_jpeg_b64="A" * 60_000)
        other = make_event("someone-else", 48.1, 11.5)
        cases = {
            b"this is not json": "not JSON",
            json.dumps(bad_schema).encode(): "schema",
            nan_text.encode(): "not finite",
            json.dumps(huge).encode(): "too large",
            json.dumps(make_event(device, 0.0, 0.0)).encode(): "(0, 0)",
            json.dumps(other).encode(): "device mismatch",
            json.dumps(make_event(device, 48.1, 11.5, captured_at="2099-01-01T00:00:00Z")).encode(): "future",
            json.dumps(make_event(device, 48.1, 11.5, seq=2**70)).encode(): "database refused",
        }
        for raw in cases:
            dev.publish("event", raw)
        # Valid JSON that PostgreSQL's jsonb refuses (a NUL character), on the status topic.
        dev.publish("status", b'{"state": "online", "version": "x\\u0000y"}')
        cases[b"status"] = "database refused"
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM rejected") == len(cases)), \
            count(fresh_db, "SELECT count(*) FROM rejected")
        with psycopg.connect(fresh_db) as conn:
            rows = {bytes(r[1]): r[0] for r in conn.execute("SELECT reason, raw FROM rejected")}
        for raw, reason in cases.items():
            if reason == "database refused":
                assert any(reason in v for v in rows.values())
                continue
            assert reason in rows[raw[:4096]], reason  # the raw bytes are kept up to ingest.rejected_keep_bytes
        assert _submissions("failed") - failed == len(cases) - 1  # every event case, not the status one
        # The device hears which of its messages will never be accepted, and why.
        zero = json.loads(next(raw for raw, reason in cases.items() if reason == "(0, 0)"))
        told = {r["id"]: r["reason"] for a in dev.acks for r in a.get("rejected", [])}
        assert "(0, 0)" in told[zero["event_id"]]
        assert not dev.acked_events()
        # The worker is still alive and stores the next good event.
        good = make_event(device, 48.1, 11.5)
        dev.publish("event", good)
        assert wait_for(lambda: good["event_id"] in dev.acked_events())
        assert count(fresh_db, "SELECT count(*) FROM sightings") == 1
        # A revoked device whose session is still open: its messages are dead letters, not sightings.
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("UPDATE devices SET revoked_at = now() WHERE id = %s", (device,))
        late = make_event(device, 48.1, 11.5)
        dev.publish("event", late)
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM rejected WHERE reason = 'device revoked'") == 1)
        assert count(fresh_db, "SELECT count(*) FROM sightings") == 1
        assert late["event_id"] not in dev.acked_events()
    finally:
        dev.close()


def test_two_workers_split_without_loss_or_doubles(make_cfg, workers, mqtt_device, service_info, fresh_db) -> None:
    devices = [mqtt_device() for _ in range(3)]
    cfg = make_cfg(devices=[d for d, _ in devices], ingest={"batch_size": 50})
    pair = workers(cfg, 2)
    clients = [DeviceClient(service_info.mqtt_host, service_info.mqtt_port, d, p) for d, p in devices]
    sent: set[str] = set()
    try:
        for i in range(400):
            client = clients[i % 3]
            event = make_event(client.device_id, 48.1 + (i % 40) * 0.001, 11.5 + secrets.randbelow(100) * 1e-6,
                               seq=i)
            sent.add(event["event_id"])
            client.publish("event", event)
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sightings") >= len(sent), timeout_s=60)
        assert count(fresh_db, "SELECT count(*) FROM sightings") == len(sent)
        assert all(w.stats["stored"] > 0 for w in pair), [w.stats for w in pair]
        assert sum(w.stats["stored"] for w in pair) == len(sent)
        acked = set().union(*(c.acked_events() for c in clients))
        assert wait_for(lambda: set().union(*(c.acked_events() for c in clients)) >= sent)
        assert acked <= sent
    finally:
        for c in clients:
            c.close()
