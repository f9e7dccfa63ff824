"""One vehicle's login must not take another vehicle's broker session. Mosquitto's password file cannot bind a
client id to a login, so a vehicle that knew another's id connected with it: the broker closed that vehicle's
connection, and a clean start dropped the commands queued for it. The vehicles' listener in
deploy/mosquitto.conf makes every client id its login (`use_username_as_clientid`); these tests run a real
broker with that listener's options, read from the shipped file, and the doctor's probe against it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config.outbox import OutboxConfig
from edge_agent.health import HealthBoard
from edge_agent.link.broker_probe import probe_broker
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from roadmon_contract import topics
from tests.conftest import on_a_free_port
from tests.test_uplink import ServerClient, login, uplink_cfg, wait_for

ROOT = Path(__file__).resolve().parents[1]
TLS_ONLY = ("protocol", "certfile", "keyfile", "cafile", "tls_version")


def vehicle_listener_options() -> list[str]:
    """The options of deploy/mosquitto.conf's vehicle listener (8883) other than its TLS files."""
    block = (ROOT / "deploy" / "mosquitto.conf").read_text().split("\nlistener 8883", 1)[1].split("\n\n", 1)[0]
    return [line for line in block.splitlines()[1:]
            if line.strip() and not line.startswith("#") and line.split()[0] not in TLS_ONLY]


def fleet_broker(private_broker):
    """A broker with the server's listener (mq.port) and the vehicles' listener as shipped (the second port)."""
    options = "\n".join(vehicle_listener_options())

    def broker_on(vehicle_port: int):
        mq = private_broker(extra_conf=f"listener {vehicle_port} 127.0.0.1\n{options}\n", start=False)
        mq.add_device("veh-a", "pw-a")
        mq.add_device("veh-b", "pw-b")
        mq.up()
        return mq, vehicle_port

    return on_a_free_port(broker_on)


def squat(port: int, user: str, password: str, client_id: str, seconds: float) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.connect("127.0.0.1", port, clean_start=True)
    client.loop_start()
    time.sleep(seconds)
    client.disconnect()
    client.loop_stop()


def test_a_vehicle_cannot_take_another_vehicles_session(private_broker, tmp_path: Path) -> None:
    assert "use_username_as_clientid true" in vehicle_listener_options()
    mq, vehicle_port = fleet_broker(private_broker)
    watcher = ServerClient(mq.port, mq.server_password)
    watcher.client.subscribe([(topics.cmd_result("veh-b", "echo"), 1)])
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    uplink = Uplink(uplink_cfg(vehicle_port, login(tmp_path, "pw-b")), "veh-b", outbox, HealthBoard())
    uplink.on_command("echo", lambda payload: {"ok": True, "echo": payload})
    try:
        uplink.start()
        wait_for(lambda: uplink.state == "connected", what="veh-b connected")
        for _ in range(3):
            squat(vehicle_port, "veh-a", "pw-a", "veh-b", 0.5)  # veh-a's login, veh-b's client id
        time.sleep(1.0)
        assert uplink.counters["connects"] == 1 and uplink.state == "connected"
        watcher.client.publish(topics.cmd("veh-b", "echo"), json.dumps({"n": 1}), qos=1)
        wait_for(lambda: watcher.last(topics.cmd_result("veh-b", "echo")) is not None, 10, "veh-b answers")
    finally:
        uplink.stop()
        watcher.close()


def test_the_doctors_probe_leaves_a_stopped_agents_commands_queued(private_broker, tmp_path: Path) -> None:
    """On that listener the probe's id becomes the agent's: with a clean start it wiped the session of a stopped
    agent, and the command queued for it with it."""
    mq, vehicle_port = fleet_broker(private_broker)
    watcher = ServerClient(mq.port, mq.server_password)
    watcher.client.subscribe([(topics.cmd_result("veh-b", "echo"), 1)])
    cfg = uplink_cfg(vehicle_port, login(tmp_path, "pw-b"))

    def agent() -> Uplink:
        uplink = Uplink(cfg, "veh-b", Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL")),
                        HealthBoard())
        uplink.on_command("echo", lambda payload: {"ok": True, "echo": payload})
        return uplink

    first = agent()
    first.start()
    wait_for(lambda: first.state == "connected", what="veh-b connected")
    first.stop()
    first.outbox.close()
    try:
        watcher.client.publish(topics.cmd("veh-b", "echo"), json.dumps({"n": 2}), qos=1)  # queued for veh-b
        time.sleep(0.5)
        steps = probe_broker(cfg, "veh-b")
        assert [s.ok for s in steps] == [True, True, None, True, True], steps  # TLS off: skipped
        second = agent()
        second.start()
        try:
            wait_for(lambda: watcher.last(topics.cmd_result("veh-b", "echo")) is not None, 10,
                     "the queued command, answered after the probe")
            assert watcher.last(topics.cmd_result("veh-b", "echo"))["echo"]["n"] == 2
        finally:
            second.stop()
            second.outbox.close()
    finally:
        watcher.close()


@pytest.mark.services
def test_the_doctor_never_logs_in_beside_a_running_agent(service_info, mqtt_device, tmp_path: Path) -> None:
    """Beside a logged-in agent a second login takes its session where the broker binds ids to logins. The
    probe skipped only an agent whose fresh status said so; one whose status had gone stale (a full disk stops
    its writes) got a second login all the same."""
    from edge_agent import config as agent_config
    from edge_agent.doctor import run_checks
    from edge_agent.health import HealthBoard
    from edge_agent.link.heartbeat import build_status, status_file_of, write_status_file
    from edge_agent.link.writer_lock import WriterLock
    from tests.test_doctor import FAST, by_name, write_config

    device, password = mqtt_device()
    (tmp_path / "pw").write_text(password + "\n")
    path = write_config(tmp_path, device={"id": device, "state_dir": str(tmp_path / "state")}, uplink={
        "enabled": True, "host": "127.0.0.1", "port": service_info.mqtt_port, "tls": False,
        "password_file": str(tmp_path / "pw"), "heartbeat_s": 1.0})
    cfg = agent_config.load(str(path))

    def broker_steps() -> dict[str, tuple]:
        result = by_name(run_checks(str(path), only=["broker"], options=FAST))["broker"]
        return {s["name"]: (s["ok"], s["detail"]) for s in result.data["steps"]}

    alone = broker_steps()
    assert alone["auth"][0] is True and "logged in as" in alone["auth"][1]  # no agent: the probe logs in
    status_path = status_file_of(cfg.outbox_path, cfg.uplink.status_file)
    lock = WriterLock(cfg.outbox_path).acquire()
    try:
        status_path.parent.mkdir(parents=True, exist_ok=True)
        stale = build_status("online", device, None, HealthBoard())
        stale["sent_at"] = (datetime.now(UTC) - timedelta(minutes=10)).isoformat(timespec="milliseconds")
        write_status_file(status_path, stale)
        beside_stale = broker_steps()
        assert beside_stale["auth"][0] is None and "no second login" in beside_stale["auth"][1], beside_stale
        assert beside_stale["publish"][0] is None
        write_status_file(status_path, build_status("online", device, None, HealthBoard(), broker="connected"))
        beside_live = broker_steps()
        assert beside_live["auth"][0] is True and "is logged in" in beside_live["auth"][1], beside_live
    finally:
        lock.release()
