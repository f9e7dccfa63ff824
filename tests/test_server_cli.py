"""`fleet-server` as a user runs it: migrate, device add (a working broker login), token create, serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
from conftest import free_port
from server_fixtures import DeviceClient, make_event, wait_for
from typer.testing import CliRunner

from fleet_server.cli import app


def _config(tmp_path, service_info, broker, port: int) -> str:
    conf = tmp_path / "server.toml"
    conf.write_text(f"""
[mqtt]
port = {service_info.mqtt_port}
[ingest]
share_group = "cli{port}"
devices = ["cli-{port}"]      # on the shared broker: only this test's device
[broker_files]
passwd_file = "{broker.passwd_file}"
acl_file = "{broker.acl_file}"
pid_file = "{broker.pid_file}"
[api]
port = {port}
[models]
dir = "{tmp_path / 'models'}"
""")
    return str(conf)


def test_cli_provisions_a_device_that_can_publish(fresh_db, service_info, broker, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ROADMON_DATABASE_DSN", fresh_db)
    monkeypatch.setenv("ROADMON_MQTT_PASSWORD", service_info.server_password)
    port = free_port()
    conf = _config(tmp_path, service_info, broker, port)
    runner = CliRunner()
    assert runner.invoke(app, ["-c", conf, "migrate"]).exit_code == 0
    bad = runner.invoke(app, ["-c", conf, "device", "add", "has space"])
    assert bad.exit_code == 1
    # The server's own broker login (and the names kept for it) can never become a device's.
    server_line = next(line for line in broker.passwd_file.read_text().splitlines()
                       if line.startswith("roadmon-server:"))
    for reserved in ("roadmon-server", "ROADMON-server", "roadmon-ingest-2"):
        refused = runner.invoke(app, ["-c", conf, "device", "add", reserved])
        assert refused.exit_code == 1 and "reserved" in refused.output, refused.output
    assert server_line in broker.passwd_file.read_text().splitlines()
    device = f"cli-{port}"
    added = runner.invoke(app, ["-c", conf, "device", "add", device, "--json"])
    assert added.exit_code == 0, added.output
    creds = json.loads(added.output)
    manager = runner.invoke(app, ["-c", conf, "token", "create", "--role", "manager", "--name", "maria", "--json"])
    manager_token = json.loads(manager.output)["token"]
    assert runner.invoke(app, ["-c", conf, "token", "create", "--role", "root", "--name", "x"]).exit_code == 1

    env = {**os.environ, "ROADMON_DATABASE_DSN": fresh_db, "ROADMON_MQTT_PASSWORD": service_info.server_password}
    server = subprocess.Popen([sys.executable, "-m", "fleet_server", "-c", conf, "serve", "--workers", "1"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _ok(base + "/health"), timeout_s=30), "server did not come up"
        me = httpx.get(base + "/api/v1/me", headers={"Authorization": f"Bearer {manager_token}"}).json()
        assert me["name"] == "maria" and me["role"] == "manager"
        # The new login works on the broker, and the event comes back acked from the served ingest.
        time.sleep(0.5)
        dev = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, creds["mqtt_username"],
                           creds["mqtt_password"])
        event = make_event(device, 48.1, 11.5)
        dev.publish("event", event)
        assert wait_for(lambda: event["event_id"] in dev.acked_events(), timeout_s=20)
        dev.close()
        # The HTTP device token works for POST /detections.
        r = httpx.post(base + "/api/v1/detections", json=make_event(device, 48.2, 11.5),
                       headers={"Authorization": f"Bearer {creds['http_token']}"})
        assert r.status_code == 202
        listed = runner.invoke(app, ["-c", conf, "device", "ls", "--json"])
        assert [d["id"] for d in json.loads(listed.output)] == [device]
        revoked = runner.invoke(app, ["-c", conf, "device", "revoke", device])
        assert revoked.exit_code == 0 and "removed" in revoked.output
        assert device not in broker.passwd_file.read_text()
    finally:
        server.terminate()
        server.wait(15)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
