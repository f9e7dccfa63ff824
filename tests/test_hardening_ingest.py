"""One device must never stop the fleet: the bounded decoder, per-message rejection, capped dead letters,
command results, the database's reasons in acks, conflicting event ids, client ids and /health on a stall."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_server import ingest
from fleet_server.api import create_app
from fleet_server.config import parse
from fleet_server.ingest import Incoming, IngestWorker, ack_messages, classify
from fleet_server.store import CLASH, store_batch
from roadmon_contract import topics
from roadmon_contract.decode import Invalid, Limits, decode_json
from tests.server_fixtures import DeviceClient, count, make_cfg, make_event, wait_for, workers

__all__ = ["make_cfg", "workers"]

DEEP = b"[" * 1100 + b"]" * 1100          # RecursionError in json.loads
LONG_INT = b'{"seq": ' + b"7" * 5000 + b"}"  # ValueError: exceeds the integer string limit


@pytest.mark.parametrize(("raw", "reason"), [
    (DEEP, "nested too deep"),
    (b'{"a": ' * 40 + b"1" + b"}" * 40, "nested too deep"),
    (LONG_INT, "number too long"),
    (b'{"x": 1.' + b"5" * 100 + b"}", "number too long"),
    (b'{"class": "pot\\u0000hole"}', "NUL"),
    (b'{"class": "pot\x00hole"}', "NUL"),
    (b'{"class": "\xff\xfe"}', "not UTF-8"),
    (b'{"confidence": NaN}', "not finite"),
    (b'{"x": {"a": [1e999]}}', "not finite"),  # valid JSON overflowing to infinity: a box echoed it as Infinity
    (b"x" * 30_000, "too large"),
    (b"{nope", "not JSON"),
])
def test_decoder_refuses_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(Invalid) as info:
        decode_json(raw, Limits(max_bytes=20_000))
    assert reason in str(info.value)


def test_decoder_keeps_brackets_inside_strings_out_of_the_depth() -> None:
    text = json.dumps({"note": "[" * 500 + "{" * 500, "bbox": [1, 2, 3, 4]}).encode()
    assert decode_json(text)["bbox"] == [1, 2, 3, 4]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_decoder_fuzz_any_bytes_give_a_value_or_invalid(raw: bytes) -> None:
    with contextlib.suppress(Invalid):
        decode_json(raw)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_decoder_fuzz_valid_json_round_trips_or_is_refused_for_a_limit(value) -> None:
    raw = json.dumps(value).encode()
    try:
        assert decode_json(raw) == value
    except Invalid as exc:  # only the documented limits may refuse valid JSON
        assert any(word in str(exc) for word in ("NUL", "number too long", "nested too deep")), exc


def _msg(topic: str, payload: bytes, mid: int = 1) -> Incoming:
    return Incoming(topic, payload, mid, 1, datetime.now(UTC))


def test_anything_that_goes_wrong_with_one_message_rejects_it_alone(monkeypatch) -> None:
    cfg = parse({})
    good = make_event("veh-1", 48.1, 11.5)
    boom = make_event("veh-1", 48.2, 11.5)
    real = ingest.check_message

    def exploding(kind, device, raw, now, ingest_cfg):
        if boom["event_id"].encode() in raw:
            raise KeyError("a bug")  # not Invalid: what a bug in a check would raise
        return real(kind, device, raw, now, ingest_cfg)

    monkeypatch.setattr(ingest, "check_message", exploding)
    batch = classify([_msg(topics.event("veh-1"), DEEP), _msg(topics.event("veh-1"), LONG_INT),
                      _msg(topics.event("veh-1"), json.dumps(boom).encode()),
                      _msg(topics.event("veh-1"), json.dumps(good).encode()),
                      _msg("roadmon/v1/veh-1/cmd/x/result", b"[1]"),
                      _msg("roadmon/v1/veh-1/cmd/x/result", b'{"ok": true}')], cfg)
    assert [e["event_id"] for e, _ in batch.events] == [good["event_id"]]
    assert batch.results == [("veh-1", "x", {"ok": True})]
    reasons = [r.reason for r in batch.rejected]
    assert len(reasons) == 4
    assert "nested too deep" in reasons[0] and "number too long" in reasons[1]
    assert reasons[2] == "could not be checked: KeyError" and batch.rejected[2].ref == boom["event_id"]
    assert "not a JSON object" in reasons[3]


def test_client_ids_are_stable_and_unique_per_role_and_instance(monkeypatch) -> None:
    cfg = parse({"mqtt": {"instance": "api-0"}})
    serve = IngestWorker(cfg, index=0, role="serve").client_id
    ingest_id = IngestWorker(cfg, index=0, role="ingest").client_id
    assert serve != ingest_id and "api-0" in serve
    assert IngestWorker(cfg, index=0, role="serve").client_id == serve  # stable across restarts
    monkeypatch.setenv("ROADMON_INSTANCE", "ingest-7f9c")
    assert "ingest-7f9c" in IngestWorker(parse({}), index=1).client_id


def _flood(host: str, port: int, device: str, password: str, lines: list[bytes]) -> None:
    # mosquitto_pub -l publishes each stdin line as one message: far faster than a Python client.
    subprocess.run(["mosquitto_pub", "-h", host, "-p", str(port), "-u", device, "-P", password, "-q", "1",
                    "-t", topics.event(device), "-l"], input=b"\n".join(lines) + b"\n", check=True, timeout=300)


@pytest.mark.services
def test_poison_flood_from_one_device_never_stops_the_others(make_cfg, workers, mqtt_device, service_info,
                                                             fresh_db) -> None:
    """20,000 poison messages from one device; another device's events are still acked all along."""
    attacker, attacker_pw = mqtt_device()
    victim, victim_pw = mqtt_device()
    cfg = make_cfg(devices=[attacker, victim])
    workers(cfg)
    poison = [DEEP, LONG_INT, b'{"class": "\xff"}', b'{"a": "x\\u0000"}'] * 5000
    flood = threading.Thread(target=_flood, args=(service_info.mqtt_host, service_info.mqtt_port, attacker,
                                                  attacker_pw, poison))
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, victim, victim_pw)
    try:
        started = time.monotonic()
        flood.start()
        waits = []
        while flood.is_alive() or len(waits) < 10:
            event = make_event(victim, 48.1, 11.5 + len(waits) * 1e-3)
            t0 = time.monotonic()
            dev.publish("event", event)
            assert wait_for(lambda e=event: e["event_id"] in dev.acked_events(), timeout_s=30.0, step_s=0.02), \
                f"event {len(waits)} of the other device never acked during the flood"
            waits.append(time.monotonic() - t0)
            time.sleep(0.1)
        flood.join()
        print(f"{len(poison)} poison messages in {time.monotonic() - started:.1f} s; a victim's event acked after "
              f"{max(waits):.2f} s at worst (median {sorted(waits)[len(waits) // 2]:.2f} s, {len(waits)} events): "
              f"{[round(w, 2) for w in waits]}")
        # On a machine shared several times over every step (broker, worker, device) waits for a CPU, so the
        # bounds scale with the load. The victim is served all along (the median), and no ack waits out the
        # flood: one slow batch commit (2.5 s once in a loaded full run) is not a stall.
        oversubscribed = max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        median = sorted(waits)[len(waits) // 2]
        assert median < 0.5 * oversubscribed, f"acks took a median {median:.2f} s (load x{oversubscribed:.1f})"
        assert max(waits) < 4.0 * oversubscribed, f"acks took {max(waits):.2f} s (load x{oversubscribed:.1f})"
        # The attacker's dead letters are capped; every poison message was still answered (PUBACKed): a good
        # event from the attacker itself, queued behind the whole flood, is acked.
        last = make_event(attacker, 48.3, 11.5)
        DeviceClient(service_info.mqtt_host, service_info.mqtt_port, attacker, attacker_pw).publish("event", last)
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM sightings WHERE event_id = %s",
                                      (last["event_id"],)) == 1, timeout_s=60)
        assert count(fresh_db, "SELECT count(*) FROM rejected WHERE device_id = %s", (attacker,)) == 100
        assert count(fresh_db, "SELECT max(length(raw)) FROM rejected") <= 4096
        assert count(fresh_db, "SELECT count(*) FROM sightings WHERE device_id = %s", (victim,)) == len(waits)
    finally:
        dev.close()


def test_a_doctor_probe_is_no_command_result() -> None:
    """`edge-agent doctor` proves the device may write under its id with a publish on cmd/probe/result; the
    server never sent a `probe`, so it is neither a command result nor a dead letter."""
    batch = classify([_msg(topics.probe("veh-1"), b'{"probe": true, "at": "2026-05-01T10:00:00Z"}'),
                      _msg(topics.cmd_result("veh-1", "config-reload"), b'{"ok": true}')], parse({}))
    assert batch.results == [("veh-1", "config-reload", {"ok": True})] and batch.rejected == []


@pytest.mark.services
def test_the_doctors_broker_probe_leaves_no_command_result(make_cfg, workers, mqtt_device, service_info, fresh_db,
                                                           tmp_path) -> None:
    from edge_agent.config.uplink import UplinkConfig
    from edge_agent.link.broker_probe import probe_broker

    device, password = mqtt_device()
    workers(make_cfg(devices=[device]))
    (tmp_path / "pw").write_text(password)
    cfg = UplinkConfig(host=service_info.mqtt_host, port=service_info.mqtt_port, tls=False,
                       password_file=str(tmp_path / "pw"))
    steps = probe_broker(cfg, device)
    assert [s.ok for s in steps if s.name in ("auth", "publish")] == [True, True], steps
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    try:  # a real result after the probe: once it is stored, the probe (published first) was handled too
        dev.publish("result", b'{"ok": true}', topic=topics.cmd_result(device, "config-reload"))
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM command_results") == 1)
    finally:
        dev.close()
    assert count(fresh_db, "SELECT count(*) FROM command_results WHERE name = 'probe'") == 0
    assert count(fresh_db, "SELECT count(*) FROM rejected WHERE topic = %s", (topics.probe(device),)) == 0


@pytest.mark.services
def test_results_reasons_conflicts_and_retention(make_cfg, workers, mqtt_device, service_info, fresh_db) -> None:
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device], ingest={"max_result_bytes": 4096, "rejected_retention_days": 1})
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # an old dead letter, past the retention
        conn.execute("INSERT INTO rejected (received_at, source, reason, raw) "
                     "VALUES (now() - interval '2 days', 'mqtt', 'old', '\\x00')")
    workers(cfg)
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    try:
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM rejected WHERE reason = 'old'") == 0)
        result = f"{topics.PREFIX}/{device}/cmd/config-reload/result"
        dev.publish("result", json.dumps({"ok": True, "blob": "x" * 10_000}).encode(), topic=result)
        dev.publish("result", b'"just a string"', topic=result)
        dev.publish("result", b'{"ok": true}', topic=result)
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM command_results") == 1)
        assert wait_for(lambda: count(fresh_db, "SELECT count(*) FROM rejected WHERE topic = %s", (result,)) == 2)
        # PostgreSQL refuses seq 2^70: the device hears why, so its agent stops re-sending it.
        refused = make_event(device, 48.1, 11.5, seq=2**70)
        dev.publish("event", refused)
        told = lambda: {r["id"]: r["reason"] for a in list(dev.acks) for r in a.get("rejected", [])}  # noqa: E731
        assert wait_for(lambda: refused["event_id"] in told())
        assert "database refused" in told()[refused["event_id"]]
        # The same event_id with other content is not acked as stored: the device is told, the first stays.
        first = make_event(device, 48.1, 11.5)
        dev.publish("event", first)
        assert wait_for(lambda: first["event_id"] in dev.acked_events())
        dev.acks.clear()
        dev.publish("event", {**first, "class": "crack"})
        assert wait_for(lambda: first["event_id"] in told())
        assert "other content" in told()[first["event_id"]] and first["event_id"] not in dev.acked_events()
        dev.publish("event", first)  # the same content again is a plain duplicate: acked
        assert wait_for(lambda: first["event_id"] in dev.acked_events())
        assert count(fresh_db, "SELECT count(*) FROM sightings WHERE class = 'pothole'") == 1
    finally:
        dev.close()


@pytest.mark.services
def test_one_event_id_twice_in_one_batch_is_judged_as_across_batches(make_cfg, fresh_db) -> None:
    # The first message of an id is stored; a later one with other content is a dead letter the device is
    # told about (it used to replace the first silently and be acked); an identical one is a plain repeat.
    cfg = make_cfg()
    first, again = make_event("veh-9", 48.1, 11.5), make_event("veh-9", 48.2, 11.5)
    other = {**first, "class": "crack", "confidence": 0.3}
    topic = topics.event("veh-9")
    # Two chunks of the prepare stage, joined into one batch by the store stage.
    batch = classify([_msg(topic, json.dumps(first).encode(), 1), _msg(topic, json.dumps(again).encode(), 2)], cfg)
    batch.extend(classify([_msg(topic, json.dumps(other).encode(), 3),
                           _msg(topic, json.dumps(again).encode(), 4)], cfg))
    with psycopg.connect(fresh_db) as conn:
        stored = store_batch(conn, batch, cfg.aggregate)
    told = ack_messages(stored, batch)["veh-9"]
    assert sorted(told["event_ids"]) == sorted([first["event_id"], again["event_id"]])
    assert told["rejected"] == [{"id": first["event_id"], "reason": CLASH}]
    with psycopg.connect(fresh_db) as conn:
        kept = conn.execute("SELECT class, payload->>'class', confidence FROM sightings WHERE event_id = %s",
                            (first["event_id"],)).fetchone()
    assert kept == ("pothole", "pothole", pytest.approx(0.8))
    assert count(fresh_db, "SELECT count(*) FROM sightings") == 2
    assert count(fresh_db, "SELECT count(*) FROM rejected WHERE reason = %s", (CLASH,)) == 1


@pytest.mark.services
def test_a_device_hears_of_a_clash_within_one_batch(make_cfg, workers, mqtt_device, service_info, fresh_db) -> None:
    device, password = mqtt_device()
    workers(make_cfg(devices=[device], ingest={"batch_wait_s": 1.0}))  # both messages land in one batch
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    try:
        first = make_event(device, 48.1, 11.5)
        dev.publish("event", first)
        dev.publish("event", {**first, "class": "crack"})
        told = lambda: [r for a in list(dev.acks) for r in a.get("rejected", [])]  # noqa: E731
        assert wait_for(lambda: told() and first["event_id"] in dev.acked_events())
        assert told() == [{"id": first["event_id"], "reason": CLASH}]
        assert len(dev.acks) == 1  # one batch, one ack message
        assert count(fresh_db, "SELECT count(*) FROM sightings WHERE class = 'pothole'") == 1
    finally:
        dev.close()


@pytest.mark.services
def test_health_turns_degraded_when_ingest_stalls(make_cfg, workers, mqtt_device, service_info, fresh_db,
                                                  tmp_path) -> None:
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device], ingest={"stall_after_s": 1.0, "db_retry_max_s": 1.0})
    running = workers(cfg)
    app = create_app(cfg, workers=running)
    client = TestClient(app)
    dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
    dsn_file = cfg.database.dsn_file
    try:
        assert client.get("/health").json() == {"status": "ok", "database": "ok", "broker": "ok", "ingest": "ok"}
        # The ingest workers lose the database (the API's pool keeps its open connection).
        good = dsn_file.read_text()
        dsn_file.write_text("postgresql://roadmon:x@127.0.0.1:9/nowhere?connect_timeout=1")
        running[0]._db.drop()
        dev.publish("event", make_event(device, 48.1, 11.5))
        assert wait_for(lambda: client.get("/health").status_code == 503, timeout_s=10)
        body = client.get("/health").json()
        assert body["ingest"].startswith("stalled: 1 messages waiting"), body
        assert "127.0.0.1:9" not in json.dumps(body)
        assert "road_ingest_stalled_seconds" in client.get("/metrics").text
        dsn_file.write_text(good)
        assert wait_for(lambda: client.get("/health").status_code == 200, timeout_s=15)
    finally:
        dev.close()
        app.state.pool.close()


def _group_joiners(host: str, port: int, device: str, password: str, filters: list[str], n: int) -> list:
    """N connections of DEVICE, each subscribed to FILTERS (shared subscriptions of a group it guessed)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    clients = []
    for i in range(n):
        done = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-joiner-{i}", protocol=mqtt.MQTTv5)
        c.username_pw_set(device, password)
        c.on_subscribe = lambda *a, d=done: d.set()
        c.connect(host, port)
        c.loop_start()
        c.subscribe([(f, 1) for f in filters])
        assert done.wait(10), "the broker did not answer the joiner's subscription"
        clients.append(c)
    return clients


@pytest.mark.services
def test_a_device_cannot_join_the_ingest_group_and_make_the_broker_drop_others_events(
        make_cfg, mqtt_device, service_info, fresh_db) -> None:
    """Mosquitto grants any subscription and checks the ACL only when it delivers: a device in the workers'
    shared group is handed its turn of every message, which the broker then drops. The group is therefore
    derived from the server's broker password unless set, and a device cannot guess it."""
    attacker, attacker_pw = mqtt_device()
    victim, victim_pw = mqtt_device()
    host, port = service_info.mqtt_host, service_info.mqtt_port

    def send_and_count(cfg, guessed: str) -> int:
        worker = IngestWorker(cfg).start()
        assert worker.wait_subscribed(30)
        guesses = [f"$share/{guessed}/roadmon/v1/+/event", f"$share/{guessed}/roadmon/v1/{victim}/event"]
        joiners = _group_joiners(host, port, attacker, attacker_pw, guesses, 4)
        dev = DeviceClient(host, port, victim, victim_pw)
        events = [make_event(victim, 48.1, 11.5 + i * 1e-3) for i in range(8)]
        try:
            for e in events:
                dev.publish("event", e)
            wait_for(lambda: {e["event_id"] for e in events} <= dev.acked_events(), timeout_s=8)
            return len({e["event_id"] for e in events} & dev.acked_events())
        finally:
            dev.close()
            for c in joiners:
                c.disconnect()
                c.loop_stop()
            worker.stop()

    # A group a device can guess: most of the victim's events never reach the server.
    assert send_and_count(make_cfg(devices=[victim], ingest={"share_group": "fleet"}), "fleet") < 8
    # Unset, the group comes from the broker password: the same in every worker, not "ingest", and not guessed.
    cfg = make_cfg(devices=[victim], ingest={"share_group": None})
    group = cfg.share_group()
    assert group.startswith("ingest-") and len(group) == len("ingest-") + 16
    assert group == make_cfg(devices=[victim], ingest={"share_group": None}).share_group()
    assert group in IngestWorker(cfg).client_id  # so a device cannot take a worker's session by its client id
    # The old default, copied into many a server.toml from the example, is not kept.
    assert make_cfg(devices=[victim], ingest={"share_group": "ingest"}).share_group() == group
    assert send_and_count(cfg, "ingest") == 8


def test_a_clearing_is_ignored_and_only_never_retained_kinds_are_cleared() -> None:
    """An empty retained message on event, coverage or a result is the broker deleting what was retained
    there (a worker's own clear comes back to the group): no dead letter, and never cleared again. Empty
    without the flag is a device's bad message as before; a status is the agent's, retained by design."""
    device = "veh-1"
    clearing = [Incoming(t, b"", 1, 1, datetime.now(UTC), True)
                for t in (topics.event(device), topics.coverage(device), topics.cmd_result(device, "x1"))]
    batch = classify(clearing, parse({}))
    assert batch.rejected == [] and batch.events == [] and batch.results == []
    assert ingest.to_clear(clearing) == {}
    empty_live = classify([_msg(topics.event(device), b"")], parse({}))
    assert len(empty_live.rejected) == 1 and "not JSON" in empty_live.rejected[0].reason
    # `device erase` clears the erased device's retained status; status is subscribed without retain-as-published,
    # so the clear comes flagged or not: stored as refused, it named the erased device again.
    erased = classify([_msg(topics.status(device), b""), Incoming(topics.status(device), b"", 2, 1,
                                                                  datetime.now(UTC), True)], parse({}))
    assert erased.rejected == [] and erased.statuses == []
    event = json.dumps(make_event(device, 48.1, 11.5)).encode()
    flagged = [Incoming(topics.event(device), event, 1, 1, datetime.now(UTC), True),
               Incoming(topics.event(device), event, 2, 1, datetime.now(UTC), True),
               Incoming(topics.status(device), b'{"state": "online"}', 3, 1, datetime.now(UTC), True),
               Incoming(topics.cmd_result(device, "x2"), b"junk", 4, 1, datetime.now(UTC), True),
               _msg(topics.coverage(device), b"{}")]
    assert {t: len(m) for t, m in ingest.to_clear(flagged).items()} == {
        topics.event(device): 2, topics.cmd_result(device, "x2"): 1}
    assert len(classify(flagged[:1], parse({})).events) == 1  # still ingested as usual
    status_filter = ingest.subscriptions(parse({}), "g")[2]
    assert status_filter.endswith("/status") and not ingest.subscribe_options(status_filter).retainAsPublished
    assert all(ingest.subscribe_options(f).retainAsPublished
               for f in ingest.subscriptions(parse({}), "g") if f != status_filter)


def _retained_at_broker(host: str, port: int, user: str, password: str, topic_filter: str) -> dict[str, bytes]:
    """What a fresh subscriber to TOPIC_FILTER is sent as retained. Mosquitto queues the retained messages at
    the subscription, before a marker this client publishes after its SUBACK, so the marker ends the list."""
    import secrets

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    marker = topic_filter.rstrip("#") + f"marker-{secrets.token_hex(4)}"
    retained: dict[str, bytes] = {}
    subacked, done = threading.Event(), threading.Event()

    def on_message(client, userdata, msg) -> None:
        if msg.topic == marker:
            done.set()
        elif msg.retain:
            retained[msg.topic] = bytes(msg.payload)

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"look-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    c.on_message = on_message
    c.on_subscribe = lambda *a: subacked.set()
    c.connect(host, port)
    c.loop_start()
    try:
        c.subscribe(topic_filter, qos=1)
        assert subacked.wait(10), "no SUBACK for the look at the retained messages"
        c.publish(marker, b"end", qos=1).wait_for_publish(10)
        assert done.wait(10), "the marker never came back"
        return retained
    finally:
        c.disconnect()
        c.loop_stop()


def _cleared(kind: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("road_ingest_retained_cleared_total", {"kind": kind}) or 0.0


@pytest.mark.services
def test_retained_messages_where_none_belong_are_cleared_at_the_broker_and_still_ingested(
        make_cfg, workers, mqtt_device, service_info, fresh_db) -> None:
    """A device login may publish retained on its own topics and Mosquitto 2.0 keeps them without limit
    (cmd/+/result allows any number of topics): 150 x 2.9 MB grew the broker by 424 MB, kept across restarts.
    The worker clears each one it is delivered on event, coverage and results, and ingests it as usual; the
    agent's retained status stays."""
    device, password = mqtt_device()
    running = workers(make_cfg(devices=[device]))
    host, port = service_info.mqtt_host, service_info.mqtt_port
    n = 20
    before = {kind: _cleared(kind) for kind in ("event", "result")}
    dev = DeviceClient(host, port, device, password)
    try:
        events = [make_event(device, 48.1, 11.5 + i * 1e-3) for i in range(n)]
        for i, event in enumerate(events):
            dev.publish("event", event, retain=True)
            # Half valid results, half junk (a dead letter as before): both retained on a topic of their own.
            body = b'{"ok": true}' if i % 2 else b"x" * 3000
            dev.publish("result", body, topic=topics.cmd_result(device, f"x{i}"), retain=True)
        dev.publish("status", {"state": "online", "device_id": device}, retain=True)  # as the agent does
        assert wait_for(lambda: {e["event_id"] for e in events} <= dev.acked_events(), timeout_s=30)
        look = lambda: _retained_at_broker(host, port, service_info.server_user,  # noqa: E731
                                           service_info.server_password, f"{topics.PREFIX}/{device}/#")
        assert wait_for(lambda: set(look()) == {topics.status(device)}, timeout_s=15), look()
        # A live event sent now reaches the worker after the clears' own empty messages came back to it: once it
        # is acked, those were handled too (ignored, not dead letters, not cleared again).
        last = make_event(device, 48.2, 11.5)
        dev.publish("event", last)
        assert wait_for(lambda: last["event_id"] in dev.acked_events(), timeout_s=30)
    finally:
        dev.close()
    assert count(fresh_db, "SELECT count(*) FROM sightings WHERE device_id = %s", (device,)) == n + 1
    assert count(fresh_db, "SELECT count(*) FROM command_results WHERE device_id = %s", (device,)) == n // 2
    assert count(fresh_db, "SELECT count(*) FROM rejected WHERE device_id = %s", (device,)) == n // 2
    assert count(fresh_db, "SELECT count(*) FROM rejected WHERE raw = ''::bytea") == 0
    assert count(fresh_db, "SELECT count(*) FROM devices WHERE id = %s AND state = 'online'", (device,)) == 1
    assert _cleared("event") - before["event"] == n and _cleared("result") - before["result"] == n
    assert running[0].stats["retained_cleared"] == 2 * n


@pytest.mark.services
def test_an_ingest_process_is_ready_only_once_its_workers_are_subscribed(make_cfg) -> None:
    """The ingest process's /health answered 200 from its start, for a worker whose broker login was refused too,
    so the documented restore (`up --wait`, then `cmd resend`) could send into a group nobody had joined."""
    import socket
    import urllib.error
    import urllib.request

    from fleet_server.health import ingest_process_problem
    from fleet_server.metrics_auth import serve_metrics

    def get(port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    for password, ready in (("not-the-password", False), (None, True)):
        cfg = make_cfg()
        if password:
            cfg.mqtt.password_file.write_text(password)
        running: list = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = serve_metrics(cfg.metrics, port, "127.0.0.1",
                               problem=lambda r=running, c=cfg: ingest_process_problem(r, c.ingest.stall_after_s))
        try:
            assert get(port, "/health") == (503, "degraded: starting: no worker yet\n")
            running.append(IngestWorker(cfg, index=0).start())
            assert running[0].wait_subscribed(10 if ready else 3) == ready
            status, body = get(port, "/health")
            if ready:
                assert (status, body) == (200, "ok\n")
            else:  # the reason, not only "disconnected": an operator read that as a broker outage
                assert status == 503 and body.startswith("degraded: broker: 1 of 1 workers disconnected: the broker "
                                                          "refused the login"), body
            assert get(port, "/live") == (200, "ok\n")  # the liveness probe: a broker outage restarts nothing
        finally:
            server.shutdown()
            running[-1].stop()
