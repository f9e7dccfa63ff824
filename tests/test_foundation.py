"""The project's frame: config validation, the services script, the wire contract."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import uuid

import paho.mqtt.client as mqtt
import psycopg
import pytest
from typer.testing import CliRunner

from edge_agent import config as agent_config
from edge_agent.cli import app
from roadmon_contract import topics, validate
from roadmon_contract.ids import uuid7
from scripts import services


def test_example_config_is_valid() -> None:
    cfg = agent_config.load(agent_config.EXAMPLE)
    assert cfg.device.id


def test_example_config_shows_every_key_and_runs_as_the_defaults() -> None:
    """`config example` "lists every key"; a technician copies blocks of it. Its detector block set
    score_threshold = 0.35, which overrides the model's own per-class cuts: cracks were cut at 0.35, not 0.10."""
    from edge_agent.config.detector import DetectorConfig
    from edge_agent.detect.detector import working_thresholds
    from edge_agent.detect.manifest import bundled_model_path, manifest_path_for, read_manifest
    from tests.example_keys import undocumented

    assert undocumented(agent_config.AgentConfig, agent_config.EXAMPLE.read_text()) == []
    example = agent_config.load(agent_config.EXAMPLE).detector
    manifest = read_manifest(manifest_path_for(bundled_model_path()))
    classes = ("pothole", "crack")
    assert working_thresholds(classes, manifest, example) == working_thresholds(classes, manifest, DetectorConfig())
    assert working_thresholds(classes, manifest, example)[1] < 0.2


def test_misspelt_key_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[uplink]\nprot = 1\n[device]\nid = "has space"\n')
    with pytest.raises(agent_config.ConfigError) as info:
        agent_config.load(bad)
    joined = "\n".join(info.value.problems)
    assert "uplink.prot" in joined and "device.id" in joined


def test_config_check_cli_exit_codes(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[gnss]\nbaud = -3\n")
    result = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert "gnss.baud" in result.output
    good = CliRunner().invoke(app, ["config", "check", str(agent_config.EXAMPLE)])
    assert good.exit_code == 0, good.output
    missing = CliRunner().invoke(app, ["config", "check", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 1 and "file not found" in missing.output
    # --config as every other command takes it (it was "No such option"), and the environment's.
    assert CliRunner().invoke(app, ["config", "check", "--config", str(bad)]).exit_code == 1
    assert CliRunner().invoke(app, ["config", "check"], env={"EDGE_AGENT_CONFIG": str(bad)}).exit_code == 1
    unnamed = CliRunner().invoke(app, ["config", "check"], env={"EDGE_AGENT_CONFIG": ""})
    assert unnamed.exit_code == 2 and "give the config file" in unnamed.output
    # Files it names that are not here: valid (a config may be made for another box), but said, with the
    # path a relative name now means (beside the config; an upgrade found it silently read elsewhere before).
    box = tmp_path / "box"
    box.mkdir()
    (box / "agent.toml").write_text('[camera]\nsource = "road.mp4"\n[calibration]\nintrinsics_file = "cam.toml"\n')
    (box / "cam.toml").write_text("width = 1280\nheight = 720\nfx = 900.0\nfy = 900.0\ncx = 640.0\ncy = 360.0\n")
    named = CliRunner().invoke(app, ["config", "check", str(box / "agent.toml")])
    assert named.exit_code == 0, named.output
    assert f"not found here: camera.source: {box / 'road.mp4'}" in named.output
    assert "cam.toml" not in named.output and "1 file(s) it names are not on this machine" in named.output
    # The model signing key and the model server's CA too: a missing key said ok, and every update then failed.
    (box / "agent.toml").write_text('[model_update]\npublic_key = "keys/signing.pub.pem"\nca_file = "ca.pem"\n')
    (box / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    keyless = CliRunner().invoke(app, ["config", "check", str(box / "agent.toml")])
    assert f"not found here: model_update.public_key: {box / 'keys' / 'signing.pub.pem'}" in keyless.output
    assert "ca.pem" not in keyless.output


def test_files_a_power_cut_left_empty_are_not_ok(tmp_path) -> None:
    """A file written in place and cut short by a power cut reads as empty. An empty agent.toml passed `config
    check` as ok and ran as veh-001 with every default; an empty intrinsics file passed it too, and `run` then
    refused to start ("missing width, height, fx..."): the box recorded nothing until a technician came."""
    empty = tmp_path / "agent.toml"
    empty.write_text("\n")
    result = CliRunner().invoke(app, ["config", "check", str(empty)])
    assert result.exit_code == 1 and "is empty" in result.output and "power cut" in result.output
    with pytest.raises(agent_config.ConfigError, match="is empty"):
        agent_config.load(empty)
    empty.write_text('[device]\nid = "veh-7"\n[calibration]\nintrinsics_file = "cam.toml"\n')
    (tmp_path / "cam.toml").write_bytes(b"")
    result = CliRunner().invoke(app, ["config", "check", str(empty)])
    assert result.exit_code == 1 and "calibration.intrinsics_file" in result.output and "empty" in result.output


def test_a_config_path_that_cannot_be_read_is_one_problem(tmp_path) -> None:
    binary = tmp_path / "agent.toml"
    binary.write_bytes(b"\xff\xfe[device]\n")
    for path, words in ((tmp_path, "is a folder"), (binary, "not UTF-8")):
        with pytest.raises(agent_config.ConfigError) as info:
            agent_config.load(path)
        assert len(info.value.problems) == 1 and words in info.value.problems[0]
        result = CliRunner().invoke(app, ["config", "check", str(path)])
        assert result.exit_code == 1 and words in result.output and isinstance(result.exception, SystemExit)


def test_uuid7_is_time_ordered_and_valid() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_topics_round_trip() -> None:
    assert topics.device_of(topics.event("veh-042")) == "veh-042"
    assert topics.device_of("other/v1/x/event") is None
    assert topics.shared("event") == "$share/ingest/roadmon/v1/+/event"


def test_event_schema_rejects_bad_latitude() -> None:
    event = {
        "schema": "roadmon.event/1", "event_id": str(uuid7()), "device_id": "veh-042", "seq": 1,
        "captured_at": "2026-11-28T13:45:32.120Z", "class": "pothole", "confidence": 0.87,
        "position": {"lat": 48.1, "lon": 11.5, "h_accuracy_m": 2.1},
        "vehicle": {"lat": 48.1, "lon": 11.5, "speed_mps": 10.0, "heading_deg": 90.0, "h_accuracy_m": 2.0},
        "size_m": {"width": 0.6, "length": 0.4}, "severity": 0.5, "frames": 17, "bbox": [1, 2, 3, 4],
        "model": {"name": "m", "version": "1", "sha256": "0" * 64},
    }
    assert validate.errors("event", event) == []
    event["position"]["lat"] = 95
    problems = validate.errors("event", event)
    assert len(problems) == 1 and problems[0].startswith("position/lat")


def test_status_schema_checks_what_status_shows() -> None:
    good = {"state": "online", "sent_at": "2026-12-05T07:14:37.934Z", "oldest_pending_at": None,
            "fix": {"lat": 48.1, "lon": 11.5, "h_std_m": 2.1, "speed_mps": None, "heading_deg": 359.9,
                    "state": "tracking"}, "disk_free_mb": 4000.0}
    assert validate.errors("status", good) == []
    bad = {"state": "online", "fix": {"lat": "x"}, "oldest_pending_at": "not a time", "disk_free_mb": -1}
    problems = " ".join(validate.errors("status", bad))
    for field in ("fix/lat", "'lon' is a required property", "oldest_pending_at", "disk_free_mb"):
        assert field in problems


@pytest.mark.services
def test_services_are_real_and_local(service_info, mqtt_device) -> None:
    with psycopg.connect(service_info.dsn) as conn:
        assert conn.execute("SELECT postgis_version()").fetchone()[0].startswith("3")
    device, password = mqtt_device()
    # A device may publish under its own id (the server receives it), not under another's (the broker's
    # PUBACK says not authorised and nothing is delivered), and the broker refuses a wrong password.
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    server = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    server.username_pw_set(service_info.server_user, service_info.server_password)
    subacked = threading.Event()
    server.on_subscribe = lambda *args: subacked.set()
    server.on_message = lambda c, u, m: received.put((m.topic, bytes(m.payload)))
    server.connect(service_info.mqtt_host, service_info.mqtt_port)
    server.loop_start()
    ok = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ok.username_pw_set(device, password)
    pubacks: dict[int, mqtt.ReasonCode] = {}
    ok.on_publish = lambda c, u, mid, reason, props: pubacks.__setitem__(mid, reason)
    try:
        server.subscribe(f"{topics.PREFIX}/+/event", qos=1)
        assert subacked.wait(30), "no SUBACK for the server's subscription"
        assert ok.connect(service_info.mqtt_host, service_info.mqtt_port) == 0
        ok.loop_start()
        denied = ok.publish(topics.event(f"other-{device}"), b"not mine", qos=1)
        mine = ok.publish(topics.event(device), b"mine", qos=1)
        denied.wait_for_publish(30)
        mine.wait_for_publish(30)
        assert pubacks[denied.mid].is_failure and "authori" in str(pubacks[denied.mid]).lower()
        assert not pubacks[mine.mid].is_failure
        # the broker delivers one client's messages in order: the first to arrive must be our own
        assert received.get(timeout=30) == (topics.event(device), b"mine")
        assert received.empty()
    finally:
        ok.loop_stop()
        ok.disconnect()
        server.loop_stop()
        server.disconnect()
    bad = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(service_info.mqtt_port), "-u", device, "-P", "wrong",
         "-t", topics.event(device), "-m", "x"], capture_output=True, text=True)
    assert bad.returncode != 0 and "not authorised" in (bad.stderr + bad.stdout).lower()


@pytest.mark.services
def test_services_up_is_idempotent_and_names_taken_port(service_info, tmp_path) -> None:
    script = [sys.executable, "-m", "scripts.services"]
    again = subprocess.run([*script, "up", "--json"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["mqtt_port"] == service_info.mqtt_port
    # Another instance (its own state folder, mode 700 like a fresh `mktemp -d`) pointed at the port our PostGIS
    # holds must refuse, naming the port, and not mistake our cluster for its own.
    state = tmp_path / "other-state"
    state.mkdir(mode=0o700)
    port = str(services.PG_PORT)
    env = {"ROADMON_STATE": str(state), "ROADMON_PG_PORT": port, "ROADMON_MQTT_PORT": str(services.MQTT_PORT),
           "PATH": "/usr/sbin:/usr/bin:/bin"}
    clash = subprocess.run([*script, "up"], capture_output=True, text=True, env=env)
    assert clash.returncode == 1, clash.stdout
    assert port in clash.stderr and "taken" in clash.stderr


@pytest.mark.services
def test_services_status_names_each_port(service_info) -> None:
    """A second checkout runs its own services on other ports: status says which ports are whose."""
    shown = subprocess.run([sys.executable, "-m", "scripts.services", "status"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(None, 1) for line in shown.stdout.splitlines() if not line.startswith("read"))
    assert lines["postgis"].split() == ["running", f"127.0.0.1:{services.PG_PORT}"]
    assert lines["mosquitto"].split() == ["running", f"127.0.0.1:{service_info.mqtt_port}"]
    as_json = json.loads(subprocess.run([sys.executable, "-m", "scripts.services", "status", "--json"],
                                        capture_output=True, text=True).stdout)
    assert as_json["read replica"]["port"] == services.PG_REPLICA_PORT


def test_postgres_data_is_keyed_by_the_state_folder(tmp_path) -> None:
    """Two state folders the postgres user cannot traverse still get two clusters (not one per checkout)."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir(mode=0o700)
    assert services.Postgres(state=a).data != services.Postgres(state=b).data


def test_purge_deletes_the_state_folder_and_a_cluster_kept_outside_it(tmp_path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    cluster = services.Postgres(state=state).base  # under /var/tmp when run as root: postgres cannot enter state
    (cluster / "data").mkdir(parents=True)
    (state / "mqtt").mkdir()
    assert services.purge(state) == ([state] if cluster.is_relative_to(state) else [cluster, state])
    assert not cluster.exists() and not state.exists()
    assert services.purge(state) == []  # nothing left, nothing running: says so rather than failing


@pytest.mark.services
def test_local_broker_refuses_oversized_packets(broker) -> None:
    conf = broker.conf.read_text().splitlines()
    assert "max_packet_size 3000000" in conf  # above ingest.max_message_bytes (2.5 MB), far below unbounded


@pytest.mark.services
def test_services_json_is_readable_by_its_owner_only(service_info) -> None:
    assert (services.STATE / "services.json").stat().st_mode & 0o777 == 0o600
    assert (services.STATE / "pg-password").stat().st_mode & 0o777 == 0o600
