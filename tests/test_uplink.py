"""The uplink against a real Mosquitto, with tests/ack_server.py playing the fleet server's confirmation."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config.outbox import OutboxConfig
from edge_agent.config.uplink import UplinkConfig
from edge_agent.health import HealthBoard
from edge_agent.link.heartbeat import read_status_file, uplink_trouble
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from roadmon_contract import topics, validate
from tests.ack_server import AckServer
from tests.conftest import free_port
from tests.test_outbox import make_coverage, make_event

pytestmark = pytest.mark.services


def wait_for(cond: Callable[[], bool], timeout_s: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def uplink_cfg(port: int, password_file: Path, **changes) -> UplinkConfig:
    base = dict(host="127.0.0.1", port=port, tls=False, password_file=str(password_file), backoff_initial_s=0.1,
                backoff_max_s=1.0, auth_retry_s=1.0, ack_timeout_s=3.0, heartbeat_s=0.5, session_expiry_s=120)
    return UplinkConfig(**(base | changes))


def fill(outbox: Outbox, n: int, pad: int = 200) -> list[str]:
    ids = []
    for i in range(n):
        event = make_event(outbox, severity=(i % 10) / 10, thumbnail_jpeg_b64="A" * pad)
        assert outbox.add_event(event)
        ids.append(event["event_id"])
    return ids


def confirmed(outbox: Outbox) -> int:
    return outbox.stats()["events"]["confirmed"]


class ServerClient:
    """A plain roadmon-server login for reading retained status and sending commands."""

    def __init__(self, port: int, password: str) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.qos: dict[str, int] = {}  # topic -> QoS of its last delivery
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"srv-{secrets.token_hex(4)}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set("roadmon-server", password)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        self.qos[msg.topic] = msg.qos
        self.messages.append((msg.topic, json.loads(msg.payload)))

    def last(self, topic: str) -> dict | None:
        found = [body for t, body in list(self.messages) if t == topic]
        return found[-1] if found else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def login(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(password + "\n")
    return path


def test_drain_confirms_beats_and_answers_commands(service_info, mqtt_device, tmp_path: Path, caplog) -> None:
    device, password = mqtt_device()
    server = AckServer("127.0.0.1", service_info.mqtt_port, service_info.server_user,
                       service_info.server_password, client_id=f"ack-{device}", devices=[device]).start()
    watcher = ServerClient(service_info.mqtt_port, service_info.server_password)
    # Subscribed at QoS 2: a delivery keeps the QoS it was published with, the contract's 1.
    watcher.client.subscribe([(topics.status(device), 1), (topics.cmd_result(device, "echo"), 2)])
    health = HealthBoard()
    health.update(fps=9.5, fix={"lat": 48.1, "lon": 11.5, "mode": 3})
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"), health)
    ids = fill(outbox, 200)
    cov = make_coverage()
    outbox.add_coverage(cov)
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password)), device, outbox, health)
    seen_threads: list[str] = []

    def echo(payload: dict) -> dict:
        seen_threads.append(threading.current_thread().name)
        return {"ok": True, "echo": payload}

    uplink.on_command("echo", echo)
    try:
        uplink.start()
        wait_for(lambda: outbox.stats()["queue_depth"] == 0, what="every row confirmed")
        assert set(server.events) == set(ids) and server.coverage[cov["coverage_id"]] >= 1
        assert uplink.counters["confirmed"] == 201
        # Every row went once, so each ack was a clean latency sample: the window opened and the timeout follows
        # the measured latency (Karn's rule keeps only first sends).
        assert uplink.counters["resent"] == 0
        assert uplink.flow.srtt is not None and 0 < uplink.flow.srtt < 3.0
        assert uplink.flow.window > uplink.cfg.window_initial
        wait_for(lambda: (watcher.last(topics.status(device)) or {}).get("queue_depth") == 0, what="heartbeat")
        status = watcher.last(topics.status(device))
        assert validate.errors("status", status) == []
        assert status["state"] == "online" and status["fps"] == 9.5 and status["fix"]["mode"] == 3
        watcher.client.publish(topics.cmd(device, "echo"), b"not json", qos=1)  # refused, answered, no crash
        wait_for(lambda: watcher.last(topics.cmd_result(device, "echo")) is not None, 10, "bad command result")
        assert watcher.last(topics.cmd_result(device, "echo"))["ok"] is False
        watcher.client.publish(topics.cmd(device, "echo"), json.dumps({"x": 1}), qos=1)
        wait_for(lambda: watcher.last(topics.cmd_result(device, "echo")).get("ok"), 10, "command result")
        assert watcher.last(topics.cmd_result(device, "echo")) == {"ok": True, "echo": {"x": 1}}
        assert watcher.qos[topics.cmd_result(device, "echo")] == 1
        assert seen_threads and seen_threads[0].startswith("uplink-cmd")
        file_status = read_status_file(tmp_path / "agent-status.json")
        assert file_status["health"]["broker"] == "connected"
    finally:
        uplink.stop()
        server.stop()
    wait_for(lambda: (watcher.last(topics.status(device)) or {}).get("state") == "stopped", 10, "stopped status")
    watcher.close()
    assert health.snapshot()["uplink"] == "stopped"
    errors = [r.getMessage() for r in caplog.records if r.name.startswith("edge_agent") and r.levelno >= 40]
    assert errors == [], errors  # the farewell (and everything before it) went without an error


def test_a_deeply_nested_command_or_ack_is_answered_and_the_uplink_stays_connected(service_info, mqtt_device,
                                                                                   tmp_path: Path) -> None:
    """JSON nested 200,000 deep on a box's command or ack topic raised RecursionError into paho's loop: the
    uplink reconnected, the broker delivered the same message again, and the box sent nothing for minutes."""
    device, password = mqtt_device()
    server = AckServer("127.0.0.1", service_info.mqtt_port, service_info.server_user,
                       service_info.server_password, client_id=f"ack-{device}", devices=[device]).start()
    watcher = ServerClient(service_info.mqtt_port, service_info.server_password)
    watcher.client.subscribe([(topics.cmd_result(device, "echo"), 1)])
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password)), device, outbox, HealthBoard())
    uplink.on_command("echo", lambda payload: {"ok": True, "echo": payload})
    deep = b"[" * 200_000
    try:
        uplink.start()
        wait_for(lambda: uplink.state == "connected", what="connected")
        watcher.client.publish(topics.ack(device), deep, qos=1)
        watcher.client.publish(topics.cmd(device, "echo"), deep, qos=1)
        wait_for(lambda: watcher.last(topics.cmd_result(device, "echo")) is not None, 10, "the deep command's answer")
        answer = watcher.last(topics.cmd_result(device, "echo"))
        assert answer["ok"] is False and "nested too deep" in answer["error"]
        ids = fill(outbox, 20)
        wait_for(lambda: outbox.stats()["queue_depth"] == 0, what="rows confirmed after the deep messages")
        assert set(ids) <= set(server.events)
        assert uplink.counters["connects"] == 1 and uplink.counters["bad_acks"] == 1
    finally:
        uplink.stop()
        server.stop()
        watcher.close()


def test_a_retained_command_is_never_carried_out(service_info, mqtt_device, tmp_path: Path) -> None:
    """A command published retained (a mistaken `mosquitto_pub -r`, or a server login stolen once) was carried
    out again at every reconnect of the box, through broker restarts and password changes."""
    device, password = mqtt_device()
    watcher = ServerClient(service_info.mqtt_port, service_info.server_password)
    watcher.client.subscribe([(topics.cmd_result(device, "echo"), 1)])
    runs: list[dict] = []
    cfg = uplink_cfg(service_info.mqtt_port, login(tmp_path, password))
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    watcher.client.publish(topics.cmd(device, "echo"), json.dumps({"n": 1}), qos=1, retain=True).wait_for_publish(5)
    try:
        for _ in range(2):  # two connections, each subscribing anew
            uplink = Uplink(cfg, device, outbox, HealthBoard())
            uplink.on_command("echo", lambda payload: runs.append(payload) or {"ok": True})
            uplink.start()
            wait_for(lambda up=uplink: up.state == "connected", what="connected")
            time.sleep(1.0)
            uplink.stop()
        assert runs == []
        uplink = Uplink(cfg, device, outbox, HealthBoard())
        uplink.on_command("echo", lambda payload: runs.append(payload) or {"ok": True})
        uplink.start()
        wait_for(lambda: uplink.state == "connected", what="connected")
        watcher.client.publish(topics.cmd(device, "echo"), json.dumps({"n": 2}), qos=1)  # a live one still runs
        wait_for(lambda: watcher.last(topics.cmd_result(device, "echo")) is not None, 10, "the live command's answer")
        assert [r["n"] for r in runs] == [2]
        uplink.stop()
    finally:
        watcher.client.publish(topics.cmd(device, "echo"), b"", qos=1, retain=True).wait_for_publish(5)
        watcher.close()


def test_an_unacked_result_is_sent_again_a_bounded_number_of_times(tmp_path: Path) -> None:
    """A server that stores results but never acks them: each repeat counts, and after RESULT_ATTEMPTS sends the
    box gives up instead of sending it every ack timeout for ever."""
    from types import SimpleNamespace

    from edge_agent.link.command_desk import RESULT_ATTEMPTS

    uplink = Uplink(uplink_cfg(1, login(tmp_path, "x")), "veh-res",
                    Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL")), HealthBoard())
    sent: list[str] = []
    client = SimpleNamespace(publish=lambda topic, payload, qos: sent.append(topic) or SimpleNamespace(mid=len(sent)))
    uplink._on_ack(json.dumps({"event_ids": [], "command_ids": []}).encode())  # a server that acks results
    uplink.desk.publish_result("echo", {"ok": True, "command_id": "c-1"})
    now = time.monotonic()
    for step in range(3 * RESULT_ATTEMPTS):
        uplink._publish_results(client)
        uplink.desk.results_again(now + (step + 1) * 3600.0, uplink.flow.timeout_s)  # always past the ack timeout
    assert len(sent) == RESULT_ATTEMPTS and "c-1" not in uplink.desk._unanswered
    uplink._on_ack(json.dumps({"event_ids": [], "command_ids": ["c-2"]}).encode())
    uplink.desk.publish_result("echo", {"ok": True, "command_id": "c-2"})
    uplink._publish_results(client)
    uplink._on_ack(json.dumps({"event_ids": [], "command_ids": ["c-2"]}).encode())  # acked: never sent again
    uplink.desk.results_again(now + 10 * 3600.0, uplink.flow.timeout_s)
    uplink._publish_results(client)
    assert len(sent) == RESULT_ATTEMPTS + 1


def test_an_unacked_result_outlives_the_agent_that_sent_it(tmp_path: Path) -> None:
    """A box answered a resend while no ingest worker was connected, then stopped (a power cut, a replay's end):
    the answer was never sent again (a resend's "queued" was taken for a model update's interim one) and was in
    memory only, so `cmd summary` listed the box as never answering (a restore drill)."""
    from types import SimpleNamespace

    from edge_agent.link.command_desk import UNANSWERED_FILE

    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))

    def agent() -> Uplink:
        return Uplink(uplink_cfg(1, login(tmp_path, "x")), "veh-res", outbox, HealthBoard())

    sent: list[dict] = []
    client = SimpleNamespace(publish=lambda topic, payload, qos: sent.append(json.loads(payload))
                             or SimpleNamespace(mid=len(sent)))
    first = agent()
    first.desk.publish_result("resend", {"ok": True, "status": "queued", "events": 5, "command_id": "c-9"})
    first.desk.publish_result("model-update", {"ok": True, "status": "queued", "command_id": "m-1"})  # interim
    first._publish_results(client)
    assert (tmp_path / UNANSWERED_FILE).exists()
    second = agent()  # the next start, sent nothing yet
    assert list(second.desk._unanswered) == ["c-9"]
    second.desk.results_again(time.monotonic(), second.flow.timeout_s)
    second._publish_results(client)
    assert len(sent) == 2  # not before the server is known to ack results
    second._on_ack(json.dumps({"event_ids": [], "command_ids": []}).encode())
    second.desk.results_again(time.monotonic(), second.flow.timeout_s)
    second._publish_results(client)
    assert [r.get("events") for r in sent] == [5, None, 5]
    second._on_ack(json.dumps({"event_ids": [], "command_ids": ["c-9"]}).encode())
    assert not (tmp_path / UNANSWERED_FILE).exists() and agent().desk._unanswered == {}
    (tmp_path / UNANSWERED_FILE).write_text("{not json")
    assert agent().desk._unanswered == {}  # a damaged file is ignored, not a crash
    outbox.close()


def test_the_unanswered_results_file_keeps_the_shape_boxes_in_the_field_have(tmp_path: Path) -> None:
    """A box upgraded in the field has a journal {command_id: [name, result, attempts]}: it is read, and written
    back in that shape."""
    from types import SimpleNamespace

    from edge_agent.link.command_desk import UNANSWERED_FILE

    journal = tmp_path / UNANSWERED_FILE
    journal.write_text(json.dumps({"c-old": ["resend", {"ok": True, "events": 3, "command_id": "c-old"}, 4]}))
    with Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL")) as outbox:
        uplink = Uplink(uplink_cfg(1, login(tmp_path, "x")), "veh-old", outbox, HealthBoard())
        kept = uplink.desk._unanswered["c-old"]
        assert (kept.name, kept.result, kept.attempts) == ("resend", {"ok": True, "events": 3, "command_id": "c-old"},
                                                           4)
        assert uplink.snapshot()["answers_waiting"] == 1
        sent: list[dict] = []
        client = SimpleNamespace(publish=lambda topic, payload, qos: sent.append(json.loads(payload))
                                 or SimpleNamespace(mid=len(sent)))
        uplink._on_ack(json.dumps({"event_ids": [], "command_ids": []}).encode())
        uplink.desk.results_again(time.monotonic(), uplink.flow.timeout_s)  # read back due at once
        uplink._publish_results(client)
        assert sent == [{"ok": True, "events": 3, "command_id": "c-old"}]
        assert json.loads(journal.read_text()) == {"c-old": ["resend", {"ok": True, "events": 3, "command_id": "c-old"},
                                                             5]}


def test_a_command_is_carried_out_once_and_an_answer_sent_again_only_reports(tmp_path: Path) -> None:
    """A field engineer's findings: a config-reload's "restarting" sent again after the restart stopped the agent
    a second time; one command id delivered twice ran twice (a resend's second run answered "0 rows"); a parked
    box never got the ack that lets it send kept answers."""
    from types import SimpleNamespace

    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    sent: list[dict] = []
    statuses: list[dict] = []

    def publish(topic: str, payload: str, qos: int, **_: object) -> SimpleNamespace:
        (statuses if topic.endswith("/status") else sent).append(json.loads(payload))
        return SimpleNamespace(mid=len(sent) + len(statuses))

    client = SimpleNamespace(publish=publish)
    uplink = Uplink(uplink_cfg(1, login(tmp_path, "x")), "veh-once", outbox, HealthBoard())
    runs: list[dict] = []
    restarts: list[dict] = []
    uplink.desk._workers = ThreadPoolExecutor(1)
    try:
        uplink.on_command("resend", lambda payload: runs.append(payload) or {"ok": True, "status": "queued",
                                                                          "events": 5 - 5 * (len(runs) - 1)})
        uplink.on_command("config-reload", lambda payload: {"ok": True, "status": "restarting"},
                          on_published=restarts.append)
        for _ in range(2):  # one `cmd send`, delivered twice: the repeat gets the same answer, nothing runs again
            uplink.desk.receive("resend", json.dumps({"command_id": "dup-1"}).encode())
            wait_for(lambda: not uplink.desk._results.empty(), 5, "the answer")
            uplink._publish_results(client)
        assert len(runs) == 1 and [r["events"] for r in sent] == [5, 5]
        uplink.desk.receive("config-reload", json.dumps({"command_id": "cr-1"}).encode())
        wait_for(lambda: not uplink.desk._results.empty(), 5, "the answer")
        uplink._publish_results(client)
        for mid in list(uplink.desk._result_mids):
            uplink._on_publish(client, None, mid, SimpleNamespace(is_failure=False), None)
        assert len(restarts) == 1
        # The next start: the kept "restarting" goes again (once the server is known to ack results), and only reports.
        again = Uplink(uplink_cfg(1, login(tmp_path, "x")), "veh-once", outbox, HealthBoard())
        again.on_command("config-reload", lambda payload: {"ok": True, "status": "restarting"},
                         on_published=restarts.append)
        status = again._publish_status(client, "online")
        assert status["awaiting_server"] is True  # asks for the ack a parked box otherwise never gets
        again._on_ack(json.dumps({"event_ids": [], "command_ids": [], "status_seen": status["sent_at"]}).encode())
        again.desk.results_again(time.monotonic(), again.flow.timeout_s)
        again._publish_results(client)
        assert sent[-1]["status"] == "restarting" and again.desk._result_mids == {}
        assert len(restarts) == 1
    finally:
        uplink.desk._workers.shutdown()
        outbox.close()


def test_the_in_flight_window_is_never_overrun(service_info, mqtt_device, tmp_path: Path) -> None:
    """A server that never confirms: a window of 30 in batches of 10 puts exactly 30 events in flight, and no
    more while heartbeats show the uplink's loop still turning (nothing is resent before ack_timeout_s)."""
    device, password = mqtt_device()
    server = AckServer("127.0.0.1", service_info.mqtt_port, service_info.server_user,
                       service_info.server_password, client_id=f"ack-{device}", devices=[device], ack=False).start()
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    fill(outbox, 100)
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password), window=30, window_initial=30,
                               batch=10, ack_timeout_s=600.0), device, outbox, HealthBoard())
    try:
        uplink.start()
        wait_for(lambda: server.distinct >= 30, what="a full window")
        beats = len(server.statuses)
        wait_for(lambda: len(server.statuses) >= beats + 3, what="three more heartbeats")
        assert (server.distinct, server.total) == (30, 30)
        events = outbox.stats()["events"]
        assert (events["pending"], events["sent"], events["confirmed"]) == (70, 30, 0)
        assert uplink.counters["connects"] == 1  # the loop's chores (expiry every second) kept one connection
    finally:
        uplink.stop()
        server.stop()


def test_a_bug_while_serving_reconnects_and_loses_nothing(service_info, mqtt_device, tmp_path: Path) -> None:
    """An unexpected exception while connecting or in the uplink's loop must not end the uplink: it tries again
    and drains."""
    device, password = mqtt_device()
    server = AckServer("127.0.0.1", service_info.mqtt_port, service_info.server_user,
                       service_info.server_password, client_id=f"ack-{device}", devices=[device]).start()
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    ids = fill(outbox, 40)
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password)), device, outbox, HealthBoard())
    real = uplink._publish_due
    calls = {"n": 0}

    def buggy_once(client):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return real(client)

    uplink._publish_due = buggy_once
    real_connect = uplink._connect_once
    connects = {"n": 0}

    def buggy_first_connect():
        connects["n"] += 1
        if connects["n"] == 1:
            raise RuntimeError("a bug while connecting")
        return real_connect()

    uplink._connect_once = buggy_first_connect
    try:
        uplink.start()
        wait_for(lambda: confirmed(outbox) == 40, 30, "drained after the bug")
        assert connects["n"] >= 3 and uplink.counters["connects"] >= 2 and set(server.events) == set(ids)
    finally:
        uplink.stop()
        server.stop()


def test_stopping_with_a_frozen_broker_ends_the_thread_in_seconds(private_broker, tmp_path: Path) -> None:
    """The farewell waits for its 'stopped' status a bounded time: a broker that stopped answering (frozen, not
    closed: the TCP connection stays up) must not keep the agent from shutting down, and keeps what is queued."""
    import os
    import signal

    mq = private_broker()
    mq.add_device("veh-frozen", "pw-frozen")
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    health = HealthBoard()
    uplink = Uplink(uplink_cfg(mq.port, login(tmp_path, "pw-frozen"), keepalive_s=60), "veh-frozen", outbox,
                    health)
    uplink.start()
    thread = uplink._thread
    pid = mq.pid()
    try:
        wait_for(lambda: health.snapshot()["uplink"] == "connected", 10, "connected")
        fill(outbox, 5)
        os.kill(pid, signal.SIGSTOP)
        uplink.stop(timeout_s=30)
        assert not thread.is_alive(), "the uplink thread still waits on a broker that does not answer"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert outbox.stats()["queue_depth"] == 5  # nothing confirmed, nothing lost


def test_a_puback_is_stored_as_sent_only_when_the_server_has_not_confirmed_within_a_second(tmp_path: Path) -> None:
    """Usually the server's ack follows the broker's PUBACK within milliseconds, and 'sent' is never written
    (half the drain's writes); a row still unconfirmed SENT_AFTER_S after its PUBACK is stored as 'sent'."""
    from edge_agent.link.uplink import SENT_AFTER_S, InFlight

    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    old, fresh = fill(outbox, 2)
    uplink = Uplink(uplink_cfg(1, login(tmp_path, "x")), "veh-marks", outbox, HealthBoard())
    assert len(outbox.due(2, 600.0)) == 2
    now = time.monotonic()
    for key, acked_at in ((("event", old), now - SENT_AFTER_S - 0.5), (("event", fresh), now)):
        uplink._outstanding[key] = InFlight(now + 600, now, True)
        uplink._acked.append((acked_at, key))
    uplink._apply_marks()
    assert uplink.counters["sent"] == 1
    states = dict(outbox.conn.execute("SELECT event_id, state FROM events").fetchall())
    assert (states[old], states[fresh]) == ("sent", "pending")
    uplink._apply_marks(final=True)  # stopping: every PUBACK is written
    assert dict(outbox.conn.execute("SELECT event_id, state FROM events").fetchall())[fresh] == "sent"


def test_a_refused_login_waits_at_least_auth_retry_s_with_jitter(tmp_path: Path) -> None:
    uplink = Uplink(uplink_cfg(1, login(tmp_path, "x"), auth_retry_s=30.0), "veh-pause",
                    Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL")), HealthBoard())
    pauses = [uplink.auth_pause_s() for _ in range(500)]
    assert min(pauses) >= 30.0 and max(pauses) <= 36.0
    assert max(pauses) - min(pauses) > 3.0  # jittered: a fleet refused at once does not retry in step


def test_puback_bookkeeping_of_a_dead_connection_is_pruned(tmp_path: Path) -> None:
    """Message ids whose PUBACK never came (the connection died) are forgotten once there are more than four
    windows of them; those of rows still in flight are kept."""
    from edge_agent.link.uplink import InFlight

    uplink = Uplink(uplink_cfg(1, login(tmp_path, "x"), window=10), "veh-mids",
                    Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL")), HealthBoard())
    now = time.monotonic()
    uplink._outstanding[("event", "live")] = InFlight(now + 600, now, True)
    uplink._mids = {mid: ("event", f"gone-{mid}") for mid in range(30)} | {99: ("event", "live")}
    uplink._expire(now)
    assert len(uplink._mids) == 31  # up to four windows' worth are kept: PUBACKs may still come
    uplink._mids |= {mid: ("event", f"gone-{mid}") for mid in range(30, 40)}
    uplink._expire(now)
    assert uplink._mids == {99: ("event", "live")}
    assert uplink._outstanding == {("event", "live"): InFlight(now + 600, now, True)}  # not overdue: kept


def test_stopping_an_uplink_that_never_started_or_twice_is_harmless(tmp_path: Path) -> None:
    uplink = Uplink(uplink_cfg(1, login(tmp_path, "x")), "veh-idle",
                    Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL")), HealthBoard())
    assert set(uplink.counters.values()) == {0}
    uplink.stop()
    uplink.stop()
    assert uplink._thread is None and uplink.desk._workers is None


def test_no_row_is_sent_while_the_window_is_smaller_than_what_is_in_flight(tmp_path: Path) -> None:
    """After a timeout halves the window below the rows still in flight, nothing more goes out until acks
    make room (asking the outbox for a negative number of rows would be SQLite's LIMIT -1: all of them)."""
    from edge_agent.link.uplink import InFlight

    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    fill(outbox, 30)
    uplink = Uplink(uplink_cfg(1, login(tmp_path, "x"), window=10, window_initial=10), "veh-shrunk", outbox,
                    HealthBoard())
    now = time.monotonic()
    for i in range(10):
        uplink._outstanding[("event", f"flying-{i}")] = InFlight(now + 60, now, True)
    uplink.flow.on_timeout()  # the window halves to 5; 10 are in flight

    class NoPublishing:
        def publish(self, *args, **kwargs):
            raise AssertionError("published while the window was full")

    assert uplink._room() < 0
    assert uplink._publish_due(NoPublishing()) is True  # more may be due later
    assert outbox.stats()["events"]["pending"] == 30


def test_acks_that_could_not_be_written_are_written_at_the_next_try(tmp_path: Path, monkeypatch, caplog) -> None:
    """A full or locked disk while writing the server's acks: nothing is lost, the next write stores them, and
    the retries (10 a second) do not flood the log."""
    import sqlite3

    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    good, bad = fill(outbox, 2)
    uplink = Uplink(uplink_cfg(1, login(tmp_path, "x")), "veh-retry", outbox, HealthBoard())
    real_confirmed, real_rejected = outbox.mark_confirmed, outbox.mark_rejected

    def full(*_args):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(outbox, "mark_confirmed", full)
    monkeypatch.setattr(outbox, "mark_rejected", full)
    uplink._confirmed.append(("event", good))
    uplink._rejected.append((bad, "schema: missing field"))
    with caplog.at_level(logging.WARNING, logger="edge_agent.link.uplink"):
        for _ in range(150):
            uplink._apply_marks()
    assert (uplink._confirmed, uplink._rejected) == ([("event", good)], [(bad, "schema: missing field")])
    assert len([r for r in caplog.records if "could not store" in r.getMessage()]) <= 4  # 1st and 101st of each
    monkeypatch.setattr(outbox, "mark_confirmed", real_confirmed)
    monkeypatch.setattr(outbox, "mark_rejected", real_rejected)
    uplink._apply_marks()
    assert (uplink._confirmed, uplink._rejected) == ([], [])
    assert (uplink.counters["confirmed"], uplink.counters["rejected"]) == (1, 1)
    assert outbox.stats()["queue_depth"] == 0


def test_an_ack_frees_its_rows_and_times_first_sends_only(tmp_path: Path) -> None:
    """The server's ack: its rows leave the window at once; a first send's ack latency feeds the timeout
    estimate (Karn: a re-sent row's does not); a malformed ack is counted and ignored."""
    from edge_agent.link.uplink import InFlight

    uplink = Uplink(uplink_cfg(1, login(tmp_path, "x")), "veh-ack",
                    Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL")), HealthBoard())
    now = time.monotonic()
    uplink._outstanding[("event", "a")] = InFlight(now + 60, now - 0.25, True)
    uplink._outstanding[("event", "b")] = InFlight(now + 60, now - 5.0, False)  # re-sent: no clean sample
    uplink._outstanding[("coverage", "c")] = InFlight(now + 60, now - 0.1, True)
    uplink._on_ack(json.dumps({"event_ids": ["a", "b"], "coverage_ids": []}).encode())
    assert set(uplink._outstanding) == {("coverage", "c")}
    assert uplink._confirmed == [("event", "a"), ("event", "b")]
    assert uplink.flow.srtt is not None and 0.25 <= uplink.flow.srtt < 0.5  # the first send's 0.25 s alone
    for bad in (b"not json", b"[1, 2]", json.dumps({"rejected": [{"reason": "no id"}]}).encode()):
        uplink._on_ack(bad)
    assert uplink.counters["bad_acks"] == 3 and set(uplink._outstanding) == {("coverage", "c")}


def test_broker_down_at_start_then_up(private_broker, tmp_path: Path) -> None:
    mq = private_broker(start=False)
    mq.add_device("veh-late", "pw-late")
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    ids = fill(outbox, 300)
    health = HealthBoard()
    uplink = Uplink(uplink_cfg(mq.port, login(tmp_path, "pw-late")), "veh-late", outbox, health)
    uplink.start()
    try:
        wait_for(lambda: health.snapshot()["uplink"] == "offline", 10, "offline state")
        assert "cannot reach" in (uplink.last_error or "") or uplink.last_error
        # What `edge-agent status` shows; the file is written just after the health board changes.
        wait_for(lambda: read_status_file(tmp_path / "agent-status.json")["health"]["broker"] == "offline", 10,
                 "the status file saying offline")
        assert read_status_file(tmp_path / "agent-status.json")["state"] == "offline"
        first = read_status_file(tmp_path / "agent-status.json")["sent_at"]
        time.sleep(1.5)                                                # a few backoff rounds against nothing
        # Rewritten every heartbeat while offline too: a box out of network is offline, not "not running".
        assert read_status_file(tmp_path / "agent-status.json")["sent_at"] > first
        mq.up()
        server = AckServer("127.0.0.1", mq.port, "roadmon-server", mq.server_password, client_id="ack-late").start()
        wait_for(lambda: confirmed(outbox) == 300, 30, "all confirmed after the broker came up")
        assert set(server.events) == set(ids)
        server.stop()
    finally:
        uplink.stop()


def test_broker_killed_and_restarted_mid_drain(private_broker, tmp_path: Path) -> None:
    mq = private_broker()
    mq.add_device("veh-chaos", "pw-chaos")
    server = AckServer("127.0.0.1", mq.port, "roadmon-server", mq.server_password, client_id="ack-chaos",
                       session_expiry_s=3600).start()
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    n = 3000
    ids = fill(outbox, n)
    uplink = Uplink(uplink_cfg(mq.port, login(tmp_path, "pw-chaos"), window=300, ack_timeout_s=2.0),
                    "veh-chaos", outbox, HealthBoard())
    uplink.start()
    try:
        for k in range(1, 4):
            # Confirmations are committed in batches, so the count can pass the next mark while the uplink is still
            # reconnecting after the last kill: wait for the reconnect, or two kills make one outage (CI: 3 connects).
            wait_for(lambda k=k: uplink.counters["connects"] >= k, 30, f"connected before kill {k}")
            wait_for(lambda k=k: confirmed(outbox) >= k * n // 5, 30, f"progress before kill {k}")
            assert confirmed(outbox) < n, "the drain finished before the broker could be killed"
            mq.kill()
            time.sleep(0.3)
            mq.up()
        wait_for(lambda: confirmed(outbox) == n, 60, "all confirmed after three broker crashes")
    finally:
        uplink.stop()
        server.stop()
    distinct, total = server.distinct, server.total
    print(f"broker crashes: {n} events, received distinct {distinct}, total {total}, "
          f"resent {uplink.counters['resent']}, connects {uplink.counters['connects']}")
    assert distinct == n and set(server.events) == set(ids)
    assert total >= n
    assert uplink.counters["confirmed"] == n, "each event became confirmed exactly once"
    assert uplink.counters["connects"] >= 4


def test_silent_drops_of_a_slow_subscriber_lose_nothing(private_broker, tmp_path: Path) -> None:
    mq = private_broker(extra_conf="max_queued_messages 5\nmax_inflight_messages 5")
    mq.add_device("veh-slow", "pw-slow")
    server = AckServer("127.0.0.1", mq.port, "roadmon-server", mq.server_password, client_id="ack-slow",
                       delay_s=0.002).start()
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    n = 120
    ids = fill(outbox, n)
    uplink = Uplink(uplink_cfg(mq.port, login(tmp_path, "pw-slow"), window=100, ack_timeout_s=1.0),
                    "veh-slow", outbox, HealthBoard())
    uplink.start()
    try:
        wait_for(lambda: confirmed(outbox) == n, 60, "all confirmed despite the broker's drops")
    finally:
        uplink.stop()
        server.stop()
    # The broker PUBACKed every publish, yet dropped some: only the server's confirmation made it whole.
    assert uplink.counters["resent"] > 0, "the broker dropped nothing: the scenario did not happen"
    assert set(server.events) == set(ids)
    assert uplink.counters["confirmed"] == n


def test_wrong_password_is_its_own_state_and_retried_slowly(service_info, mqtt_device, tmp_path: Path) -> None:
    device, password = mqtt_device()
    server = AckServer("127.0.0.1", service_info.mqtt_port, service_info.server_user,
                       service_info.server_password, client_id=f"ack-{device}", devices=[device]).start()
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    ids = fill(outbox, 50)
    pw_file = login(tmp_path, "wrong-" + password)
    health = HealthBoard()
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, pw_file, auth_retry_s=1.0), device, outbox, health)
    uplink.start()
    try:
        wait_for(lambda: health.snapshot()["uplink"] == "bad_credentials", 10, "bad_credentials")
        time.sleep(2.5)
        assert uplink.counters["refused_logins"] <= 4, "a refusing broker must not be hammered"
        assert health.snapshot()["uplink"] == "bad_credentials", "the state holds between slow retries"
        assert outbox.stats()["events"]["pending"] == 50
        status = read_status_file(tmp_path / "agent-status.json")
        assert status["health"]["broker"] == "bad_credentials" and status["queue_depth"] == 50
        assert status["state"] == "offline"
        assert "password file" in uplink.last_error
        pw_file.write_text(password)                                   # the technician fixes the file
        # The password is read when the client is made; the slow retry picks the fix up with a new client.
        wait_for(lambda: confirmed(outbox) == 50, 15, "drained after the password was fixed")
        assert set(server.events) == set(ids)
    finally:
        uplink.stop()
        server.stop()


def test_acl_denial_is_not_authorised_and_keeps_the_events(service_info, mqtt_device, tmp_path: Path) -> None:
    login_id, password = mqtt_device()
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    fill(outbox, 20)
    health = HealthBoard()
    # Logged in as one device but publishing as another: the broker's ACL refuses every publish.
    cfg = uplink_cfg(service_info.mqtt_port, login(tmp_path, password), username=login_id)
    uplink = Uplink(cfg, f"other-{login_id}", outbox, health)
    uplink.start()
    try:
        wait_for(lambda: health.snapshot()["uplink"] == "not_authorised", 10, "not_authorised")
        time.sleep(1.5)
        assert uplink._thread is not None and uplink._thread.is_alive()
        assert "ACL" in uplink.last_error
        assert outbox.stats()["events"]["pending"] == 20 and confirmed(outbox) == 0
        assert uplink.counters["connects"] <= 3
    finally:
        uplink.stop()


def test_broker_probe_says_which_step_breaks(service_info, mqtt_device, tmp_path: Path) -> None:
    from edge_agent.link.broker_probe import probe_broker

    device, password = mqtt_device()
    good = probe_broker(uplink_cfg(service_info.mqtt_port, login(tmp_path, password)), device)
    assert [(s.name, s.ok) for s in good] == [("dns", True), ("tcp", True), ("tls", None), ("auth", True),
                                               ("publish", True)]
    bad = probe_broker(uplink_cfg(service_info.mqtt_port, login(tmp_path, "nope")), device)
    assert [(s.name, s.ok) for s in bad][3:] == [("auth", False), ("publish", None)]
    assert "refused" in bad[3].detail and bad[3].hint
    acl = probe_broker(uplink_cfg(service_info.mqtt_port, login(tmp_path, password), username=device),
                       f"x-{device}")
    assert (acl[4].ok, "ACL" in (acl[4].hint or "")) == (False, True)
    closed = probe_broker(uplink_cfg(1, login(tmp_path, password)), device)
    assert [(s.name, s.ok) for s in closed][:3] == [("dns", True), ("tcp", False), ("tls", None)]
    tls = probe_broker(uplink_cfg(service_info.mqtt_port, login(tmp_path, password), tls=True), device)
    assert tls[2].ok is False and "TLS" in tls[2].detail


@pytest.mark.parametrize("name", ["", "a/b", "a+", "#", "cmd/+/x"])
def test_command_names_that_are_not_one_topic_level_are_refused(name: str, tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as outbox:
        uplink = Uplink(uplink_cfg(1, login(tmp_path, "pw")), "veh-x", outbox, HealthBoard())
        with pytest.raises(ValueError, match="invalid command name"):
            uplink.on_command(name, lambda payload: {})
        uplink.on_command("echo", lambda payload: {})  # one level, no wildcard: fine


def test_two_boxes_with_one_login_are_named_and_backed_off(service_info, mqtt_device, tmp_path: Path,
                                                            caplog) -> None:
    # A copied SD card: two agents with one device id take the broker session from each other. Without a
    # pause they reconnected ~50 times a second each, flooding the log; now each waits longer every time.
    device, password = mqtt_device()
    uplinks = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        outbox = Outbox(folder / "outbox.db", OutboxConfig(synchronous="NORMAL"))
        uplinks.append(Uplink(uplink_cfg(service_info.mqtt_port, login(folder, password), backoff_max_s=2.0),
                              device, outbox, HealthBoard()))
    with caplog.at_level(logging.ERROR, logger="edge_agent.link.uplink"):
        for uplink in uplinks:
            uplink.start()
        try:
            wait_for(lambda: any("takes the session over" in (u.last_error or "") for u in uplinks), 20,
                     "the takeover named")
            # ...and in the status file doctor and `status` read: the state flips between connected and offline,
            # so neither state said why (doctor was green: "running, broker offline").
            wait_for(lambda: all("takes the session over" in (uplink_trouble(read_status_file(u.status_path) or {})
                                                               or "") for u in uplinks), 20, "the trouble in status")
            time.sleep(6)
            connects = sum(u.counters["connects"] for u in uplinks)
            assert connects <= 20, f"{connects} connections in ~6 s: not backed off"
        finally:
            for uplink in uplinks:
                uplink.stop()
    assert any("a copied SD card" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if "takes the session over" in r.getMessage()]) <= 4


def test_the_server_sends_only_commands_an_agent_answers(tmp_path: Path) -> None:
    """`fleet-server cmd send` refuses names no agent answers; each name it allows has its agent handler."""
    from edge_agent.detect import model_update
    from edge_agent.link import resend
    from edge_agent.runtime import config_reload
    from fleet_server.commands import KNOWN_COMMANDS

    assert set(KNOWN_COMMANDS) == {model_update.COMMAND, config_reload.COMMAND, resend.COMMAND}
    with Outbox(tmp_path / "outbox.db") as outbox:
        uplink = Uplink(UplinkConfig(enabled=False), "veh-1", outbox)
        assert resend.COMMAND in uplink.desk._handlers  # every uplink answers it: it only needs the outbox
        assert resend.handle(outbox, {})["status"] == "invalid"
        assert "no zone" in resend.handle(outbox, {"since": "2026-12-06T02:00:00"})["reason"]
        far = resend.handle(outbox, {"since": "9999-12-31T23:59:59-23:59"})  # past year 9999 in UTC: OverflowError
        assert far["status"] == "invalid" and "out of range" in far["reason"]
        assert resend.handle(outbox, {"since": "2026-12-06T02:00:00Z"})["events"] == 0


@pytest.mark.parametrize("connected", [False, True])
def test_the_status_file_follows_a_part_that_changed_state_at_once(private_broker, tmp_path: Path,
                                                                    connected: bool) -> None:
    """A receiver unplugged read "ok" in `status` and doctor for up to uplink.heartbeat_s (30 s): the file was
    rewritten only with the heartbeat."""
    mq = private_broker()
    mq.add_device("veh-quick", "pw-quick")
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    health = HealthBoard()
    health.update(gnss="ok", camera="ok")
    port = mq.port if connected else free_port()  # nobody listens there
    uplink = Uplink(uplink_cfg(port, login(tmp_path, "pw-quick"), heartbeat_s=60), "veh-quick", outbox, health)
    uplink.start()
    status = tmp_path / "agent-status.json"
    try:
        wait_for(lambda: health.snapshot()["uplink"] == ("connected" if connected else "offline"), 10, "the link")
        wait_for(lambda: status.exists() and read_status_file(status)["health"]["gnss"] == "ok", 10, "a first file")
        health.update(gnss="lost")
        wait_for(lambda: read_status_file(status)["health"]["gnss"] == "lost", 3, "the file saying lost")
    finally:
        uplink.stop()
