"""`fleet-server` as a user runs it: migrate, device add (a working broker login; an existing id is an error
unless --reissue), token create, serve."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from click.testing import Result
from typer.testing import CliRunner

from fleet_server.cli import app
from roadmon_contract import ids
from tests.conftest import free_port
from tests.server_fixtures import DeviceClient, make_event, wait_for

pytestmark = pytest.mark.services  # every test here runs against the local PostGIS/Mosquitto


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


@dataclass
class Cli:
    """`fleet-server -c CONF ...` in this process, on a migrated fresh database; PORT is the API's."""

    conf: str
    port: int
    runner: CliRunner

    def run(self, *args: str) -> Result:
        return self.runner.invoke(app, ["-c", self.conf, *args])


@pytest.fixture
def cli(fresh_db, service_info, broker, tmp_path, monkeypatch) -> Cli:
    monkeypatch.setenv("ROADMON_DATABASE_DSN", fresh_db)
    monkeypatch.setenv("ROADMON_MQTT_PASSWORD", service_info.server_password)
    port = free_port()
    tool = Cli(_config(tmp_path, service_info, broker, port), port, CliRunner())
    assert tool.run("migrate").exit_code == 0
    return tool


def test_cli_provisions_a_device_that_can_publish(cli, fresh_db, service_info, broker) -> None:
    conf, port = cli.conf, cli.port
    bad = cli.run("device", "add", "has space")
    assert bad.exit_code == 1
    # The server's own broker login (and the names kept for it) can never become a device's.
    server_line = next(line for line in broker.passwd_file.read_text().splitlines()
                       if line.startswith("roadmon-server:"))
    for reserved in ("roadmon-server", "ROADMON-server", "roadmon-ingest-2"):
        refused = cli.run("device", "add", reserved)
        assert refused.exit_code == 1 and "reserved" in refused.output, refused.output
    assert server_line in broker.passwd_file.read_text().splitlines()
    device = f"cli-{port}"
    added = cli.run("device", "add", device, "--json")
    assert added.exit_code == 0, added.output
    creds = json.loads(added.output)
    manager = cli.run("token", "create", "--role", "manager", "--name", "maria", "--json")
    manager_token = json.loads(manager.output)["token"]
    assert cli.run("token", "create", "--role", "root", "--name", "x").exit_code == 1

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
        listed = cli.run("device", "ls", "--json")
        assert [d["id"] for d in json.loads(listed.output)] == [device]
        revoked = cli.run("device", "revoke", device)
        assert revoked.exit_code == 0 and "removed" in revoked.output
        assert device not in broker.passwd_file.read_text()
        # SIGTERM (what systemd, compose and k8s send): the worker leaves the group and ends its session. uvicorn
        # raised the signal again after its shutdown, so the session stayed, taking its share of the fleet's
        # messages until it expired; and its client id names the port, so a second serve beside it differs.
        server.terminate()
        out = server.communicate(timeout=30)[0].decode()
        assert re.search(rf"-serve{port}-\S+ stopped, left the group and ended its session", out), out[-3000:]
        # Every line stamped in UTC, uvicorn's access lines too (they had no time at all).
        assert re.search(r"\d\d\.\d{3}Z INFO uvicorn.access: .*POST /api/v1/detections", out), out[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(15)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_cli_tokens_expire_and_rotate(cli, fresh_db) -> None:
    import psycopg

    from fleet_server import auth

    device = json.loads(cli.run("device", "add", "cli-rot", "--json").output)
    created = json.loads(cli.run("token", "create", "--role", "viewer", "--name", "weekly-viewer-of-the-city",
                                 "--days", "7", "--json").output)
    weekly = created["token"]
    in_a_week = datetime.fromisoformat(created["expires_at"]) - datetime.now(UTC)  # said at creation now
    assert timedelta(days=6, hours=23) < in_a_week <= timedelta(days=7)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        days = dict(conn.execute("SELECT role, round(extract(epoch FROM expires_at - created_at) / 86400) "
                                 "FROM api_tokens").fetchall())
        assert days == {"device": 90, "viewer": 7}
        device_token_id = conn.execute("SELECT id FROM api_tokens WHERE role = 'device'").fetchone()[0]
        assert auth.verify(conn, weekly) is not None
    rotated = cli.run("token", "rotate", str(device_token_id), "--overlap-hours", "0",
                                  "--json")
    assert rotated.exit_code == 0, rotated.output
    new = json.loads(rotated.output)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert auth.verify(conn, device["http_token"]) is None  # no overlap: the old one is gone at once
        who = auth.verify(conn, new["token"])
        assert who is not None and who.device_id == "cli-rot" and who.role == "device"
    assert cli.run("token", "rotate", str(device_token_id)).exit_code == 1
    # A token rotated once is not rotated again (that left two live replacements for one holder).
    first_rotation = json.loads(cli.run("token", "rotate", str(created["id"]), "--json").output)
    again = cli.run("token", "rotate", str(created["id"]))
    assert again.exit_code == 1 and f"token {first_rotation['id']} replaces it" in again.output
    # Rotated twice (4 -> 6 -> 7): the hint names the live end, not 6 (already replaced too).
    second_rotation = json.loads(cli.run("token", "rotate", str(first_rotation["id"]), "--json").output)
    again = cli.run("token", "rotate", str(created["id"]))
    assert again.exit_code == 1 and f"token {second_rotation['id']} replaces it now" in again.output
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # a token past its expiry looked as live as any
        conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 day' WHERE id = %s", (device_token_id,))
    listing = cli.run("token", "ls").output
    assert "expires (UTC)" in listing and "replaced" in listing  # times are UTC, and say so
    expired = [line for line in listing.splitlines() if "(expired)" in line]
    assert len(expired) == 1 and expired[0].split()[1] == str(device_token_id), listing
    # The id printed at creation is the one `token ls`, `revoke` and `rotate` take; piped, no cell is cut short.
    row = next(line for line in listing.splitlines() if "weekly-viewer-of-the-city" in line)
    assert row.split()[1] == str(created["id"]) and "…" not in listing


def test_new_device_ids_start_with_a_letter_or_digit(cli, fresh_db, broker) -> None:
    # `-veh-9` was accepted, and then `device revoke -veh-9` failed as an unknown option; `..` is a path part.
    logins = broker.passwd_file.read_text()
    for bad in ("-veh-9", "..", ".", ".hidden", "_x"):
        refused = cli.run("device", "add", "--", bad)
        assert refused.exit_code == 1 and "starting with a letter or digit" in refused.output, (bad, refused.output)
    assert broker.passwd_file.read_text() == logins
    # The ids the demo, the docs and the tests use are still new ids (added here with unique ones only: the
    # session's broker is shared).
    assert all(ids.new_device_id_ok(d) for d in ("demo-veh-1", "veh-001", "test-0a1b2c", "imp-0a1b2c-7"))
    for good in (f"veh-{cli.port}", f"test-{cli.port:x}", f"{cli.port}.a_b-c"):
        assert cli.run("device", "add", good, "--json").exit_code == 0, good
    # A device given such an id before the rule keeps working: re-issued and revoked by its id as it is.
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id) VALUES ('-old-1')")
    assert cli.run("device", "add", "--reissue", "--json", "--", "-old-1").exit_code == 0
    revoked = cli.run("device", "revoke", "--", "-old-1")
    assert revoked.exit_code == 0 and "revoked: 1 token(s)" in revoked.output, revoked.output


def test_a_login_without_a_database_row_is_named_as_such(cli, fresh_db, broker, tmp_path) -> None:
    """After a restore from a backup older than a device (or the demo's database recreated), its broker login
    was still there: `device add` replaced it without a word (the box using it then locked out), while `device
    import` called the id 'already exists' though `device ls` did not list it."""
    from fleet_server.mqtt_accounts import set_password

    orphan = f"orphan-{cli.port}"
    set_password(broker.passwd_file, orphan, "the-box-still-uses-this")
    (tmp_path / "fleet.csv").write_text(f"device_id\n{orphan}\n")
    imported = cli.run("device", "import", str(tmp_path / "fleet.csv"))
    assert imported.exit_code == 1 and "has a broker login but is not in the database" in imported.output
    before = broker.passwd_file.read_text()
    added = json.loads(cli.run("device", "add", orphan, "--json").output)
    assert added["device_id"] == orphan and "had a broker login but no database row" in added["warning"]
    assert broker.passwd_file.read_text() != before
    again = cli.run("device", "add", "--reissue", orphan, "--json")
    assert again.exit_code == 0 and "warning" not in json.loads(again.output)
    shown = cli.run("device", "add", f"{orphan}-2")
    assert shown.exit_code == 0 and "warning" not in shown.output


def test_rotation_keeps_the_old_tokens_lifetime(cli, fresh_db) -> None:
    def lifetime_days(token_id: int) -> float:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            return conn.execute("SELECT extract(epoch FROM expires_at - created_at) / 86400 FROM api_tokens "
                                "WHERE id = %s", (token_id,)).fetchone()[0]

    contractor = json.loads(cli.run("token", "create", "--role", "viewer", "--name", "contractor", "--days", "1",
                                    "--json").output)
    rotated = cli.run("token", "rotate", str(contractor["id"]), "--json")
    assert rotated.exit_code == 0, rotated.output
    new = json.loads(rotated.output)
    assert round(lifetime_days(new["id"]), 3) == 1  # not api.user_token_days (365)
    expires = datetime.fromisoformat(new["expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(days=1)
    # --days says otherwise, bounded as in `token create`; the text output names the new expiry.
    longer = cli.run("token", "rotate", str(new["id"]), "--days", "30")
    assert longer.exit_code == 0 and "expires at" in longer.output, longer.output
    newest = int(re.search(r"token (\d+) replaces", longer.output).group(1))
    assert round(lifetime_days(newest)) == 30
    for days in ("0", "36501"):
        assert cli.run("token", "rotate", str(newest), "--days", days).exit_code == 2
    # A device token gets the device rule; one from before tokens expired gets the default, not "never".
    device = json.loads(cli.run("device", "add", "cli-life", "--json").output)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        device_token = conn.execute("SELECT id FROM api_tokens WHERE device_id = 'cli-life'").fetchone()[0]
        conn.execute("UPDATE api_tokens SET expires_at = created_at + interval '5 days' WHERE id = %s",
                     (device_token,))
        old = conn.execute("INSERT INTO api_tokens (lookup, token_hash, name, role) VALUES ('oldlookup', 'x', "
                           "'old', 'viewer') RETURNING id").fetchone()[0]
    assert device["http_token"]
    rotated_device = json.loads(cli.run("token", "rotate", str(device_token), "--json").output)
    assert round(lifetime_days(rotated_device["id"])) == 90
    rotated_old = json.loads(cli.run("token", "rotate", str(old), "--json").output)
    assert round(lifetime_days(rotated_old["id"])) == 365


def test_cli_device_add_refuses_an_existing_id_unless_reissue(cli, fresh_db, broker) -> None:
    import psycopg

    from fleet_server import auth

    device = f"cli-re-{cli.port}"

    def login() -> str:
        return next(line for line in broker.passwd_file.read_text().splitlines() if line.startswith(device + ":"))

    def tokens() -> list[tuple]:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            return conn.execute("SELECT id, revoked_at IS NOT NULL FROM api_tokens ORDER BY id").fetchall()

    unknown = cli.run("device", "add", device, "--reissue")  # nothing to re-issue yet
    assert unknown.exit_code == 1 and device in unknown.output, unknown.output
    first = json.loads(cli.run("device", "add", device, "--json").output)
    # Again: an error naming the id, and nothing changed (the vehicle's login and token keep working).
    before = login(), tokens()
    again = cli.run("device", "add", device)
    assert again.exit_code == 1 and device in again.output and "--reissue" in again.output, again.output
    assert (login(), tokens()) == before
    # Asked for: new credentials, the old token revoked.
    renewed = cli.run("device", "add", device, "--reissue", "--json")
    assert renewed.exit_code == 0, renewed.output
    second = json.loads(renewed.output)
    assert second["mqtt_password"] != first["mqtt_password"] and login() != before[0]
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert auth.verify(conn, first["http_token"]) is None
        assert auth.verify(conn, second["http_token"]).device_id == device
    # A revoked device stays revoked: neither add nor --reissue gives it credentials again.
    assert cli.run("device", "revoke", device).exit_code == 0
    for args in ([], ["--reissue"]):
        refused = cli.run("device", "add", device, *args)
        # Not "use --reissue", which would then be refused as well.
        assert refused.exit_code == 1 and "is revoked" in refused.output and "gives it new" not in refused.output
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert conn.execute("SELECT revoked_at IS NOT NULL FROM devices WHERE id = %s", (device,)).fetchone()[0]
        assert auth.verify(conn, second["http_token"]) is None
    assert device not in broker.passwd_file.read_text()


def test_cli_commands_go_only_to_known_devices_and_known_commands(cli, fresh_db, tmp_path) -> None:
    """`cmd send` and `model push` to a revoked, unknown or malformed device, an unknown command or one with
    topic characters, or a file that is no ONNX model: one line saying so, exit 1, nothing published or
    staged (a wildcard used to end in a traceback, the rest in a false "sent")."""
    from tests.onnx_models import tiny_detector

    conf, port = cli.conf, cli.port
    live, gone = f"cli-{port}", f"cli-gone-{port}"
    for device in (live, gone):
        assert cli.run("device", "add", device).exit_code == 0
    assert cli.run("device", "revoke", gone).exit_code == 0
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_detector())
    text = tmp_path / "notes.onnx"
    text.write_text("not really onnx")

    def refused(args: list[str], expect: str) -> None:
        result = cli.run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert expect in result.output and len(result.output.strip().splitlines()) == 1, (args, result.output)
        assert isinstance(result.exception, SystemExit), result.exception  # a clean exit, no traceback

    refused(["cmd", "send", gone, "model-update", "{}"], "is revoked")
    refused(["cmd", "send", "ghost-99", "config-reload"], "no device 'ghost-99'")
    refused(["cmd", "send", "+", "config-reload"], "no device '+'")
    refused(["cmd", "send", live, "a/b"], "unknown command 'a/b'")
    refused(["cmd", "send", live, "#"], "unknown command '#'")
    refused(["cmd", "resend"], "give --since")
    refused(["cmd", "resend", "--since", "yesterday"], "not an RFC 3339 time")
    refused(["cmd", "resend", "--since", "2026-12-06T01:00:00"], "needs a zone")
    refused(["cmd", "resend", "--rejected", "--device", gone], "is revoked")
    refused(["cmd", "resend", "--since", "2099-01-01T00:00:00Z"], "is in the future")
    refused(["cmd", "resend", "--rejected", "--device", "ghost-99"], "no device 'ghost-99'")
    sent = cli.run("cmd", "resend", "--since", "2026-12-06T01:00:00Z", "--device", live)
    assert sent.exit_code == 0 and "cmd/resend sent to 1 devices" in sent.output, sent.output
    # A database restored from a dump older than a device knows it not; the broker's password file does.
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("DELETE FROM api_tokens WHERE device_id = %s", (live,))
        conn.execute("DELETE FROM devices WHERE id = %s", (live,))
    again = cli.run("cmd", "resend", "--since", "2026-12-06T01:00:00Z", "--device", live)
    assert again.exit_code == 0 and f"only the broker's password file knows (added after the database's " \
        f"backup?): {live}" in again.output.replace("\n", " "), again.output
    everyone = cli.run("cmd", "resend", "--since", "2026-12-06T01:00:00Z")  # the shared test broker's every login
    assert everyone.exit_code == 0 and "only the broker's password file knows" in everyone.output
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # back, as its next status would bring it
        conn.execute("INSERT INTO devices (id) VALUES (%s)", (live,))
    # Revoked after the backup: the restored database lists it unrevoked, the broker has no login for it. It was
    # counted as reached, and its events since the backup were lost without a word.
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE devices SET revoked_at = NULL WHERE id = %s", (gone,))
    restored = cli.run("cmd", "resend", "--since", "2026-12-06T01:00:00Z")
    said = restored.output.replace("\n", " ")
    assert restored.exit_code == 0 and gone in said.split("has no login for")[1], restored.output
    assert "revoke them again" in said
    # A password file that is not where the config says read as empty: every device "revoked since the backup".
    moved = Path(cli.conf).with_name("moved.toml")
    moved.write_text(Path(cli.conf).read_text().replace('passwd_file = "', 'passwd_file = "/nonexistent'))
    wrong = cli.runner.invoke(app, ["-c", str(moved), "cmd", "resend", "--since", "2026-12-06T01:00:00Z"])
    assert wrong.exit_code == 1 and "does not exist" in wrong.output and "revoke" not in wrong.output
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE devices SET revoked_at = now() WHERE id = %s", (gone,))
    soon = (datetime.now(UTC) + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    refused(["cmd", "resend", "--since", soon], "is in the future")  # within the hour was taken, did nothing
    push = ["model", "push", "--url-base", "https://fleet.example.org"]
    refused([*push, "ghost-99", str(model)], "no device 'ghost-99'")
    refused([*push, gone, str(model)], "is revoked")
    refused([*push, live, str(text)], "not an ONNX model")
    refused(["model", "push", live, str(model)], "models.url_base")
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").glob("*.onnx")), "nothing staged"

    small = tmp_path / "small.toml"
    small.write_text(Path(conf).read_text().replace("[models]\n", "[models]\nmax_size_mb = 0.001\n"))
    result = cli.runner.invoke(app, ["-c", str(small), *push, live, str(model)])
    assert result.exit_code == 1 and "models.max_size_mb" in result.output, result.output

    sent = cli.run("cmd", "send", live, "config-reload")
    assert sent.exit_code == 0 and "command_id" in sent.output and "expires" in sent.output, sent.output


def test_device_add_that_cannot_write_the_broker_login_leaves_nothing_behind(cli, fresh_db, tmp_path) -> None:
    # The row and token were committed first: the add failed with a traceback and its retry said "already
    # exists".
    (tmp_path / "a-file").write_text("")
    conf = Path(cli.conf)
    conf.write_text(re.sub(r'passwd_file = ".*"', f'passwd_file = "{tmp_path / "a-file" / "passwd"}"',
                           conf.read_text()))
    result = cli.run("device", "add", "half-1")
    assert result.exit_code == 1 and "not added: cannot write the broker login" in result.output, result.output
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM devices WHERE id = 'half-1'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM api_tokens WHERE device_id = 'half-1'").fetchone()[0] == 0


@pytest.mark.parametrize(("env", "says"), [
    ("wrong-password", "password authentication failed"),
    ("nobody-listens", "cannot use the database"),
])
def test_start_up_faults_are_one_line(env: str, says: str, service_info, tmp_path) -> None:
    # A wrong password or a database that is down ended in psycopg's traceback.
    conf = tmp_path / "server.toml"
    conf.write_text("[database]\nconnect_timeout_s = 3\n")
    dsn = psycopg.conninfo.conninfo_to_dict(service_info.dsn)
    dsn = dsn | ({"password": "wrong"} if env == "wrong-password" else {"port": "1"})
    environ = {**os.environ, "ROADMON_DATABASE_DSN": psycopg.conninfo.make_conninfo(**dsn)}
    # An audited command too: its audit row is not asked of a database that is not there (a second wait).
    for command in (["token", "ls"], ["device", "revoke", "veh-x"]):
        done = subprocess.run([sys.executable, "-m", "fleet_server", "-c", str(conf), *command], env=environ,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) <= 2 and "audit" not in done.stderr, done.stderr


def test_missing_dsn_file_is_one_line(tmp_path) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text(f'[database]\ndsn_file = "{tmp_path / "nodsn"}"\n')
    environ = {k: v for k, v in os.environ.items() if k != "ROADMON_DATABASE_DSN"}
    done = subprocess.run([sys.executable, "-m", "fleet_server", "-c", str(conf), "migrate"], env=environ,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "nodsn" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_cmd_summary_says_how_the_fleet_answered_a_resend(cli, fresh_db) -> None:
    """After a restore `cmd results DEVICE` was the only view of a resend's progress: one device at a time."""
    before = datetime.now(UTC) - timedelta(minutes=1)
    answers = {"veh-a": [{"ok": True, "status": "queued", "events": 3, "coverage": 1}],
               "veh-b": [{"ok": True, "status": "queued", "events": 5, "coverage": 0},  # twice: its latest counts
                         {"ok": True, "status": "queued", "events": 0, "coverage": 0}],
               "veh-c": [{"ok": False, "status": "expired", "reason": "expired"}]}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for device in ("veh-a", "veh-b", "veh-c", "veh-d", "veh-gone"):
            conn.execute("INSERT INTO devices (id) VALUES (%s)", (device,))
        conn.execute("UPDATE devices SET revoked_at = now() WHERE id = 'veh-gone'")
        conn.execute("INSERT INTO command_results (device_id, name, payload, received_at) VALUES "
                     "('veh-d', 'resend', '{\"ok\": true, \"events\": 9}', now() - interval '1 day')")
        for device, payloads in answers.items():
            for i, payload in enumerate(payloads):
                conn.execute("INSERT INTO command_results (device_id, name, payload, received_at) VALUES "
                             "(%s, 'resend', %s, now() + %s * interval '1 second')", (device, json.dumps(payload), i))
    since = before.strftime("%Y-%m-%dT%H:%M:%SZ")
    got = json.loads(cli.run("cmd", "summary", "resend", "--since", since, "--json").output)
    assert got["answered"] == 3 and got["statuses"] == {"queued": 2, "expired": 1}
    assert got["resent"] == {"events": 3, "coverage": 1}  # veh-b's latest answer: nothing more to send
    assert got["not_answered_devices"] == ["veh-d"]  # its answer is older; veh-gone is revoked
    text = cli.run("cmd", "summary", "resend", "--since", since).output
    assert "3 devices answered (1 expired, 2 queued)" in text and "1 devices not revoked have not answered" in text


def test_tables_show_what_devices_sent_as_text_not_as_rich_markup(cli, fresh_db) -> None:
    """A command result is written by the device: markup in it ("[link=...]", "[bold red]") is shown, not run."""
    payload = {"status": "[bold red]done[/] [link=https://evil.example]click[/link]"}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id) VALUES ('veh-9')")
        conn.execute("INSERT INTO command_results (device_id, name, payload) VALUES (%s, %s, %s)",
                     ("veh-9", "[blink]config-reload[/blink]", json.dumps(payload)))
    unknown = cli.run("cmd", "results", "veh-nope")   # was an empty table and exit 0, as if it had none
    assert unknown.exit_code == 1 and "no device 'veh-nope'" in unknown.output
    out = cli.run("cmd", "results", "veh-9")
    assert out.exit_code == 0, out.output
    assert "[blink]config-reload[/blink]" in out.output
    assert "[bold red]done[/] [link=https://evil.example]click[/link]" in out.output


def test_device_credentials_name_the_public_broker_or_say_they_do_not(cli, tmp_path) -> None:
    """`device add` handed vehicles mqtt.host (127.0.0.1, or `mosquitto` in compose), the server's own way to the
    broker; [devices] broker is the public address, and without it the output says what it shows."""
    internal = cli.run("device", "add", f"cli-{cli.port}")
    assert internal.exit_code == 0, internal.output
    assert re.search(r"mqtt_host\s+127\.0\.0\.1\n", internal.stdout)
    said = " ".join(internal.stdout.split())
    assert "the server's own address of its broker" in said and '[devices] broker = "mqtt.example.org:8883"' in said
    conf = Path(cli.conf)
    conf.write_text(conf.read_text() + '[devices]\nbroker = "mqtt.example.org"\n')
    public = json.loads(cli.run("device", "add", f"cli-{cli.port}-b", "--json").stdout)
    assert (public["mqtt_host"], public["mqtt_port"], public["mqtt_address_is_public"]) == ("mqtt.example.org",
                                                                                            8883, True)
    shown = cli.run("device", "add", f"cli-{cli.port}-c")
    assert re.search(r"mqtt_host\s+mqtt\.example\.org\n", shown.stdout) and "server's own" not in shown.stdout
    (tmp_path / "fleet.csv").write_text(f"cli-{cli.port}-d\n")
    imported = cli.run("device", "import", str(tmp_path / "fleet.csv"))
    assert imported.exit_code == 0, imported.output
    sheet = (tmp_path / "fleet.credentials.csv").read_text().splitlines()
    assert sheet[1].split(",")[2:4] == ["mqtt.example.org", "8883"]


def test_device_ls_says_why_a_box_is_quiet_as_the_api_and_metrics_do(cli, fresh_db) -> None:
    """An on-call engineer's Monday: boxes quiet on the map. The box's last status said why (camera without
    frames, a clock 5 h behind) and the server had refused its messages, but `device ls`, the API and the
    metrics dropped all of it; `device ls` and road_devices said `online` where the API said `stale`."""
    from fleet_server.config import AggregateConfig
    from fleet_server.metrics import DeviceCollector
    from fleet_server.store import Batch, store_batch

    now = datetime.now(UTC)
    behind = (now - timedelta(hours=5)).isoformat().replace("+00:00", "Z")
    statuses = [("veh-cam", {"state": "online", "sent_at": behind, "queue_depth": 0,
                             "health": {"camera": "no_frames", "gnss": "ok", "uplink": "connected"},
                             "counters": {"events_no_fix": 0}}, now),
                ("veh-ok", {"state": "online", "sent_at": now.isoformat(), "queue_depth": 0,
                            "health": {"camera": "ok", "gnss": "ok", "gnss_problem": None}, "m_per_frame": 7.2}, now),
                ("veh-gps", {"state": "online", "sent_at": now.isoformat(), "queue_depth": 0,
                             "health": {"camera": "frozen", "gnss": "lost",
                                        "gnss_problem": "900 bytes in 5 s but not one valid NMEA sentence"}}, now),
                ("veh-gone", {"state": "online", "queue_depth": 3}, now)]
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        store_batch(conn, Batch(statuses=statuses), AggregateConfig())
        conn.execute("UPDATE devices SET last_seen = now() - interval '11 minutes' WHERE id = 'veh-gone'")
        for _ in range(5):
            conn.execute("INSERT INTO rejected (source, topic, device_id, reason, raw) VALUES "
                         "('mqtt', 'roadmon/v1/veh-bad/event', 'veh-bad', 'not JSON', '\\x00')")
    listed = {d["id"]: d for d in json.loads(cli.run("device", "ls", "--json").output)}
    assert {k: d["state"] for k, d in listed.items()} == {
        "veh-cam": "online", "veh-ok": "online", "veh-gps": "online", "veh-gone": "stale"}  # veh-bad: never stored
    assert sorted(listed["veh-gps"]["problems"]) == [
        "GNSS receiver sends nothing usable: defects cannot be placed (900 bytes in 5 s but not one valid NMEA "
        "sentence)", "camera shows one picture while driving (stream stuck, or aimed off the road): nothing new is "
        "detected"]
    cam = listed["veh-cam"]
    assert cam["health"]["camera"] == "no_frames" and -5 * 3600 - 60 < cam["clock_offset_s"] < -5 * 3600 + 60
    assert any("camera gives no frames" in p for p in cam["problems"])
    assert any(p.startswith("clock 5.0 h behind") for p in cam["problems"])
    assert listed["veh-ok"]["problems"] == ["a frame every 7.2 m while driving: too slow for its speed, defects "
                                            "are missed"]
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id) VALUES ('veh-bad') ON CONFLICT DO NOTHING")
    bad = {d["id"]: d for d in json.loads(cli.run("device", "ls", "--json").output)}["veh-bad"]
    assert bad["refused_24h"] == 5 and bad["problems"] == ["5 messages refused in 24 h, most for: not JSON"]
    table = cli.run("device", "ls").output
    assert "stale" in table and "camera gives no frames" in table and "5 messages refused" in table
    assert "5 of 5 devices listed (the whole fleet: 4 with a problem; 3 online, 1 stale, 1 unknown)" in table
    # A fleet of 10,000 was 10,000 lines to grep: the API's filters, on the command line.
    stale = json.loads(cli.run("device", "ls", "--json", "--state", "stale").output)
    assert [d["id"] for d in stale] == ["veh-gone"]
    refused = cli.run("device", "ls", "--problem", "refused,clock")
    assert "veh-bad" in refused.output and "veh-cam" in refused.output and "veh-ok" not in refused.output
    assert "2 of 5 devices listed" in refused.output
    bogus = cli.run("device", "ls", "--state", "asleep")
    assert bogus.exit_code == 1 and "--state takes a comma list of online, stale" in bogus.output

    def fetch(sql: str) -> list[tuple]:
        with psycopg.connect(fresh_db) as conn:
            return conn.execute(sql).fetchall()

    collected = list(DeviceCollector(fetch, 600.0).collect())
    states = {sample.labels["state"]: sample.value for metric in collected
              if metric.name == "road_devices" for sample in metric.samples}
    assert states == {"online": 3.0, "stale": 1.0, "unknown": 1.0}
    # One series per online device and problem: a frozen camera on a driving van fired no alert at all.
    troubled = {(s.labels["device"], s.labels["problem"]) for metric in collected
                if metric.name == "road_device_problems" for s in metric.samples}
    assert troubled == {("veh-cam", "camera"), ("veh-cam", "clock"), ("veh-ok", "sparse_frames"),
                        ("veh-gps", "camera"), ("veh-gps", "gnss")}
    assert sorted(listed["veh-gps"]["problem_codes"]) == ["camera", "gnss"]

    # The broker's Last Will for veh-gps (it vanished): offline, and what it last said stays (it replaced the
    # whole status, so an offline van lost its last known problems and its place on the map).
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE devices SET last_fix = '{\"lat\": 48.1, \"lon\": 11.5}' WHERE id = 'veh-gps'")
        will = {"state": "offline", "device_id": "veh-gps", "version": "0.3.0"}
        store_batch(conn, Batch(statuses=[("veh-gps", will, now)]), AggregateConfig())
        last_fix = conn.execute("SELECT last_fix FROM devices WHERE id = 'veh-gps'").fetchone()[0]
    gone = {d["id"]: d for d in json.loads(cli.run("device", "ls", "--json").output)}["veh-gps"]
    assert gone["state"] == "offline" and sorted(gone["problem_codes"]) == ["camera", "gnss"]
    assert last_fix == {"lat": 48.1, "lon": 11.5}
    troubled = {(s.labels["device"], s.labels["problem"]) for metric in DeviceCollector(fetch, 600.0).collect()
                if metric.name == "road_device_problems" for s in metric.samples}
    assert ("veh-gps", "camera") not in troubled  # offline: RoadDevicesOffline's to count, not a problem alert


def test_one_box_with_odd_health_values_does_not_take_the_fleet_view_down(cli, fresh_db) -> None:
    """A status stored with {"camera": {"a": 1}} (before the schema said a health value is a string) made
    `device ls`, the devices API and /metrics fail for the whole fleet, and revoking the box did not help."""
    from fleet_server.metrics import DeviceCollector

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("""INSERT INTO devices (id, state, last_seen, state_at, last_status) VALUES
            ('v-odd', 'online', now(), now(), '{"state": "online", "health": {"camera": {"a": 1}, "gnss": [1]},
              "counters": {"events_no_fix": true}, "fix": {"lat": 48, "lon": 11, "speed_mps": "fast"}}'),
            ('v-ok', 'online', now(), now(), '{"state": "online", "health": {"camera": "frozen"}}')""")
    listed = cli.run("device", "ls", "--json")
    assert listed.exit_code == 0, listed.output
    rows = {d["id"]: d for d in json.loads(listed.output)}
    assert rows["v-odd"]["problems"] == [] and rows["v-ok"]["problem_codes"] == ["camera"]

    def fetch(sql: str) -> list[tuple]:
        with psycopg.connect(fresh_db) as conn:
            return conn.execute(sql).fetchall()

    names = {m.name for m in DeviceCollector(fetch, 600.0).collect()}
    assert "road_device_problems" in names


def test_a_status_at_null_island_keeps_the_last_position(cli, fresh_db) -> None:
    """A status whose fix is (0, 0), a receiver's placeholder, put the van off Africa: the dashboard's first view
    and "show all" zoomed out to the whole world for every manager."""
    from fleet_server.config import AggregateConfig
    from fleet_server.store import Batch, store_batch

    now = datetime.now(UTC)
    status = {"state": "online", "sent_at": now.isoformat(), "queue_depth": 0,
              "fix": {"lat": 48.1, "lon": 11.5, "h_std_m": 3.0}}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        store_batch(conn, Batch(statuses=[("veh-island", status, now)]), AggregateConfig())
        assert conn.execute("SELECT last_fix->>'lat' FROM devices WHERE id = 'veh-island'").fetchone()[0] == "48.1"
        store_batch(conn, Batch(statuses=[("veh-island", status | {"fix": {"lat": 0, "lon": 0, "h_std_m": 3.0}},
                                           now)]), AggregateConfig())
        assert conn.execute("SELECT last_fix->>'lat' FROM devices WHERE id = 'veh-island'").fetchone()[0] == "48.1"


def test_a_revoked_box_is_no_problem_of_the_fleet(cli, fresh_db) -> None:
    """A withdrawn box's last words (a clock 5 h off) led the Devices list and counted as a fleet problem."""
    from fleet_server.device_view import device_rows

    behind = (datetime.now(UTC) - timedelta(hours=5)).isoformat()
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id, state, last_seen, state_at, last_status, revoked_at) VALUES "
                     "('veh-gone', 'online', now(), now(), %s, now())",
                     (json.dumps({"state": "online", "sent_at": behind, "health": {"camera": "frozen"}}),))
        (row,) = device_rows(conn, datetime.now(UTC), 600)
    assert row["state"] == "revoked" and row["problems"] == [] and row["problem_codes"] == []


def test_migrate_puts_sequences_a_restore_rewound_past_the_ids_in_use(cli, fresh_db) -> None:
    """A dump restored into a database that still had its tables rewinds every sequence (its setval runs, its
    rows do not load): a manager's change and the boxes' re-sent sightings were refused for good (duplicate key),
    with `migrate` and /health saying all was well. An outside disaster-recovery drill."""
    for name in ("a", "b", "c"):
        assert cli.run("token", "create", "--role", "viewer", "--name", name).exit_code == 0
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("SELECT setval('api_tokens_id_seq', 1)")  # what the dump's setval leaves
    moved = cli.run("migrate")
    assert moved.exit_code == 0, moved.output
    assert "api_tokens_id_seq gave ids up to 1 while api_tokens holds higher ones: moved on to 3" in moved.output
    assert cli.run("token", "create", "--role", "viewer", "--name", "d").exit_code == 0  # was: duplicate key
    assert "moved on" not in cli.run("migrate").output  # nothing behind: nothing said
    never = cli.run("migrate", "--after-restore")  # on a database that was not restored: nothing moves
    assert never.exit_code == 0 and "ids left as they are" in never.output, never.output


def test_migrate_recognises_a_restored_database_and_moves_ids_past_the_lost_ones(cli, fresh_db) -> None:
    """An operator who forgot `migrate --after-restore` got the ids of lost defects and tokens for new ones (a work
    order's defect 15 opened another pothole) and nothing said so (a restore drill's finding)."""
    for name in ("a", "b"):
        assert cli.run("token", "create", "--role", "viewer", "--name", name).exit_code == 0
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # What pg_restore leaves: new tables, and the origin row as the dump had it (the old table's oid).
        conn.execute("UPDATE database_origin SET defects_table = 1")
    warned = cli.run("cmd", "resend", "--since", "2026-12-01T00:00:00Z")
    assert "restored from a dump and not migrated since" in warned.output, warned.output
    moved = cli.run("migrate")
    assert moved.exit_code == 0, moved.output
    said = " ".join(moved.output.split())
    assert "api_tokens ids continue after 100002" in said and "defects ids continue after 100000" in said
    assert "this database was restored from a dump" in said and "cmd resend --since the dump's time" in said
    again = cli.run("migrate")  # once per restore: a second run moves nothing
    assert "ids continue" not in again.output and "restored" not in again.output
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert conn.execute("SELECT nextval('defects_id_seq')").fetchone()[0] == 100001
        # A dump of a database before 027, restored: its origin unknown, its sequences where the dump left them.
        conn.execute("UPDATE database_origin SET defects_table = NULL")
        conn.execute("SELECT setval('api_tokens_id_seq', 2)")
    older = cli.run("migrate", "--after-restore")
    assert "api_tokens ids continue after 100002" in " ".join(older.output.split()), older.output


def test_resend_says_when_its_window_leaves_a_gap_or_the_logins_look_old(cli, fresh_db, tmp_path,
                                                                         service_info) -> None:
    """A drill's operator mistakes: --since the time of the loss instead of the dump's ("sent", "0 rows", and
    the gap stayed unnoticed); a broker password file holding only the server's login named nobody."""
    event = make_event(f"cli-{cli.port}", 48.1, 11.5)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for device in ("veh-a", "veh-b"):
            conn.execute("INSERT INTO devices (id) VALUES (%s)", (device,))
        conn.execute("INSERT INTO sightings (event_id, device_id, seq, captured_at, received_at, class, confidence, "
                     "geom, h_accuracy_m, payload) VALUES (%s, 'veh-a', 0, now() - interval '3 hours', "
                     "now() - interval '2 hours', 'pothole', 0.8, ST_GeogFromText('POINT(11.5 48.1)'), 2.0, %s)",
                     (event["event_id"], json.dumps(event)))
    late = (datetime.now(UTC) - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    only_server = tmp_path / "passwd-server-only"
    only_server.write_text(f"{service_info.server_user}:$7$101$x$y\n")
    conf = Path(cli.conf)
    conf.write_text(re.sub(r'passwd_file = ".*"', f'passwd_file = "{only_server}"', conf.read_text()))
    sent = cli.run("cmd", "resend", "--since", late)
    assert sent.exit_code == 0, sent.output
    said = " ".join(sent.output.split())
    assert "is after the newest sighting this database holds" in said and "--since " in said
    assert "2 of them the database lists but the broker's password file has no login for" in said
    assert "older than the database" in said  # not "revoke them" for the whole fleet


def test_resend_with_a_refused_server_login_says_so_in_one_line(cli, monkeypatch) -> None:
    monkeypatch.setenv("ROADMON_MQTT_PASSWORD", "not-the-password")
    started = time.monotonic()
    done = cli.run("cmd", "resend", "--since", "2026-12-01T00:00:00Z")
    assert done.exit_code == 1 and "refused the server's login" in done.output, done.output
    assert time.monotonic() - started < 20 and "Traceback" not in done.output


def test_token_ls_json_is_what_a_cron_job_reads(cli) -> None:
    made = json.loads(cli.run("token", "create", "--role", "viewer", "--name", "wall", "--json").output)
    listed = cli.run("token", "ls", "--json")
    assert listed.exit_code == 0, listed.output
    (row,) = [t for t in json.loads(listed.output) if t["name"] == "wall"]
    assert row["id"] == made["id"] and row["role"] == "viewer" and row["expired"] is False
    assert row["created_at"].endswith("Z") and row["revoked_at"] is None


def test_two_device_adds_of_one_id_at_once_tell_the_second_it_exists(cli, fresh_db) -> None:
    """Two cron jobs adding one device: the loser died on the database's "duplicate key" message."""
    import threading

    conf = cli.conf
    env = {**os.environ}
    results: list[subprocess.CompletedProcess] = []
    with psycopg.connect(fresh_db, autocommit=True) as conn, conn.transaction():
        # Hold the new id's lock so that both commands reach it together.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('device ' || %s))", ("veh-race",))
        threads = [threading.Thread(target=lambda: results.append(subprocess.run(
            [sys.executable, "-m", "fleet_server", "-c", conf, "device", "add", "veh-race"], env=env,
            capture_output=True, text=True, timeout=120))) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(3)
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [(r.returncode, r.stderr) for r in results]
    loser = next(r for r in results if r.returncode == 1)
    assert "already exists" in loser.stderr and "duplicate key" not in loser.stderr, loser.stderr


def test_a_reader_that_closes_the_pipe_early_is_no_failure(cli, fresh_db) -> None:
    """`device ls | head -1` exited 1 without a word, which a `set -o pipefail` cron job read as "could not"."""
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id) SELECT 'veh-' || n FROM generate_series(1, 300) n")
    for args in (["device", "ls"], ["device", "ls", "--json"], ["token", "ls"]):
        proc = subprocess.Popen([sys.executable, "-m", "fleet_server", "-c", cli.conf, *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
        proc.stdout.close()  # the reader went away before the first line
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0 and b"Traceback" not in stderr, (args, proc.returncode, stderr[-400:])


def test_device_erase_deletes_what_the_server_holds_about_one_device(cli, fresh_db, service_info, broker) -> None:
    """A right-to-erasure request: nothing could find and delete one device's data; `revoke` keeps it all (a
    data-protection review). Another device's data and the defects it saw stay, recounted."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from fleet_server.config import AggregateConfig
    from fleet_server.store import Batch, store_batch
    from roadmon_contract import topics
    from tests.server_fixtures import make_coverage

    gone, stays = f"cli-{cli.port}", f"other-{cli.port}"
    creds = json.loads(cli.run("device", "add", gone, "--json").output)
    assert cli.run("device", "add", stays).exit_code == 0
    now = datetime.now(UTC)
    shared = [make_event(d, 48.1, 11.5, at=now - timedelta(minutes=m)) for d, m in ((gone, 30), (stays, 20))]
    alone = make_event(gone, 48.2, 11.6, at=now - timedelta(minutes=25))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        store_batch(conn, Batch(events=[(e, now) for e in shared]), AggregateConfig())
        store_batch(conn, Batch(events=[(alone, now)]), AggregateConfig())
        cov = make_coverage(gone, [(48.0, 11.5), (48.01, 11.5)], now - timedelta(minutes=5), now)
        store_batch(conn, Batch(coverage=[(cov, now)]), AggregateConfig())
        solo, both = (conn.execute("SELECT defect_id FROM sightings WHERE event_id = %s",
                                   (e["event_id"],)).fetchone()[0] for e in (alone, shared[1]))
        token_id = conn.execute("SELECT id FROM api_tokens WHERE device_id = %s", (gone,)).fetchone()[0]
        conn.execute("INSERT INTO defect_misses (defect_id, coverage_id, device_id, started_at, ended_at) "
                     "VALUES (%s, %s, %s, now(), now())", (both, cov["coverage_id"], gone))
        conn.execute("INSERT INTO audit_log (token_id, who, method, path, status) VALUES (%s, %s, 'POST', "
                     "'/v1/detections', 202)", (token_id, f"device {gone}"))
        conn.execute("INSERT INTO command_results (device_id, name, payload) VALUES (%s, 'resend', '{}')", (gone,))
        conn.execute("INSERT INTO rejected (source, device_id, reason, raw) VALUES ('mqtt', %s, 'x', '\\x00')", (gone,))
        conn.execute("INSERT INTO http_submissions (device_id) VALUES (%s)", (gone,))
    from fastapi.testclient import TestClient

    from fleet_server.api import create_app
    from fleet_server.config import load

    viewer = {"Authorization": "Bearer " + json.loads(cli.run("token", "create", "--role", "viewer", "--name", "gis",
                                                                "--json").output)["token"]}
    api = TestClient(create_app(load(Path(cli.conf))))
    copy = api.get("/api/v1/defects", headers=viewer).json()  # a GIS copy, kept in step with its sync_token
    assert {f["id"] for f in copy["features"]} == {solo, both}
    box = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, gone, creds["mqtt_password"])
    box.publish("status", {"state": "online", "fix": {"lat": 48.1, "lon": 11.5}}, retain=True)
    box.close()

    def held() -> dict[str, int]:
        with psycopg.connect(fresh_db) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t} WHERE {w}", (gone,)).fetchone()[0] for t, w in (
                ("sightings", "device_id = %s"), ("coverage", "device_id = %s"), ("defect_misses", "device_id = %s"),
                ("command_results", "device_id = %s"), ("rejected", "device_id = %s"),
                ("http_submissions", "device_id = %s"), ("api_tokens", "device_id = %s"), ("devices", "id = %s"),
                ("audit_log", "who = 'device ' || %s"))}

    everything = {"sightings": 2, "coverage": 1, "defect_misses": 1, "command_results": 1, "rejected": 1,
                  "http_submissions": 1, "api_tokens": 1, "devices": 1, "audit_log": 1}
    assert held() == everything
    dry = cli.run("device", "erase", gone, "--json")
    assert dry.exit_code == 0, dry.output
    said = json.loads(dry.output)
    assert said["erased"] is False and said["rows"] == everything
    assert said["defects_deleted"] == [solo] and said["defects_recounted"] == [both]
    assert held() == everything  # a dry run by default
    erased = cli.run("device", "erase", gone, "--yes")
    assert erased.exit_code == 0, erased.output
    assert "erased" in erased.output and held() == dict.fromkeys(everything, 0)
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM defects WHERE id = %s", (solo,)).fetchone()[0] == 0
        assert conn.execute("SELECT sighting_count, vehicle_count FROM defects WHERE id = %s",
                            (both,)).fetchone() == (1, 1)
        assert conn.execute("SELECT count(*) FROM sightings WHERE device_id = %s", (stays,)).fetchone()[0] == 1
    assert gone + ":" not in broker.passwd_file.read_text() and stays + ":" in broker.passwd_file.read_text()
    # The copy drops the deleted defect and hears of the recounted one.
    page = api.get("/api/v1/defects", params={"since_token": copy["sync_token"]}, headers=viewer).json()
    api.app.state.pool.close()
    assert page["removed"] == [solo] and [f["id"] for f in page["features"]] == [both]
    # The broker no longer hands anyone its last status (its last position).
    seen: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.username_pw_set(service_info.server_user, service_info.server_password)
    sub.on_message = lambda _c, _u, msg: seen.append(msg.payload)
    sub.connect(service_info.mqtt_host, service_info.mqtt_port)
    sub.loop_start()
    try:
        sub.subscribe(topics.status(gone), qos=1)
        time.sleep(1.5)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert seen == []
    again = cli.run("device", "erase", gone, "--yes")
    assert again.exit_code == 1 and "holds nothing" in again.output


def test_commands_that_change_data_are_in_the_audit_log(cli, fresh_db, monkeypatch) -> None:
    """A data-protection review: the API's calls were audited, the CLI's were not, so "who erased this device, who
    issued that token" had no answer. Each changing command leaves one row with its outcome; reads leave none."""
    box = f"cli-{cli.port}"
    monkeypatch.setenv("SUDO_USER", "alice")  # root alone says nothing about who
    assert cli.run("device", "add", box, "--name", "Jane Doe's van").exit_code == 0
    assert cli.run("token", "create", "--role", "viewer", "--name", "gis\x1b[2J").exit_code == 0
    assert cli.run("device", "revoke", "nobody").exit_code == 1
    assert cli.run("cmd", "send", box, "config-reload", '{"password": "hunter2", "fps": 5}').exit_code == 0
    assert cli.run("device", "erase", box).exit_code == 0  # a dry run: what would go
    with psycopg.connect(fresh_db) as conn:
        before = conn.execute("SELECT path FROM audit_log WHERE method = 'CLI' ORDER BY id").fetchall()
    assert "Jane Doe" in before[0][0] and len(before) == 5  # until the erasure
    assert cli.run("device", "erase", box, "--yes").exit_code == 0
    assert cli.run("device", "ls").exit_code == 0
    assert cli.run("token", "ls").exit_code == 0
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT who, role, path, status, client, token_id FROM audit_log WHERE method = 'CLI' "
                            "ORDER BY id").fetchall()
    assert [(path, status) for _, _, path, status, _, _ in rows] == [
        # The erasure keeps who added the device and when, not its display name (often the driver's).
        (f"device add {box} (the rest erased with the device)", 0),
        ("token create --role=viewer '--name=gis\\x1b[2J'", 0),  # an escape sequence stays text
        ("device revoke nobody", 1),
        (f"cmd send {box} (the rest erased with the device)", 0),  # a payload may hold anything
        (f"device erase {box}", 0),
        (f"device erase {box} --yes", 0),  # outlives the erasure: the record that it was done
    ]
    user = rows[0][0]
    assert user.startswith("alice as ") or user == "alice"
    assert {(who, role, token_id) for who, role, _, _, _, token_id in rows} == {(user, "cli", None)}
    assert all(client for *_, client, _ in rows)


def test_a_command_still_ends_as_it_did_when_the_audit_log_refuses(cli, fresh_db) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_log RENAME TO audit_log_away")  # every insert fails
    try:
        done = cli.run("device", "add", f"cli-{cli.port}")
        assert done.exit_code == 0
        assert "audit log did not take this command" in done.stderr
    finally:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("ALTER TABLE audit_log_away RENAME TO audit_log")


def test_the_audit_log_keeps_no_secret_a_command_was_given() -> None:
    from fleet_server.cli_audit import command_line
    from fleet_server.cli_cmd import cmd_send, model_push

    payload = '{"password": "hunter2", "url": "https://u:p@x.example"}'
    assert command_line(["cmd", "send"], cmd_send, {"device_id": "veh-1", "name": "config-reload",
                                                     "payload": payload}) == \
        "cmd send veh-1 config-reload '{\"password\": \"…\", \"url\": \"…\"}'"
    line = command_line(["model", "push"], model_push, {"device_id": "veh-1", "file": Path("m.onnx"),
                                                         "url_base": "https://ops:pa55word@fleet.example:8443/x"})
    assert line == "model push veh-1 m.onnx --url-base=https://fleet.example:8443/x" and "pa55word" not in line
