"""The uplink against the real fleet server's ingest (not the stand-in ack server): every valid event ends
up in PostGIS and confirmed on the box; one the server refuses comes back as `rejected` and is not sent
again."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from edge_agent.config.outbox import OutboxConfig
from edge_agent.health import HealthBoard
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from roadmon_contract.times import utc_now_iso
from tests.server_fixtures import make_cfg, workers  # noqa: F401  (fixtures)
from tests.test_outbox import make_coverage, make_event
from tests.test_uplink import login, uplink_cfg, wait_for

pytestmark = pytest.mark.services


def test_real_server_confirms_and_rejects(make_cfg, workers, mqtt_device, fresh_db, service_info,  # noqa: F811
                                          tmp_path: Path) -> None:
    device, password = mqtt_device()
    workers(make_cfg(devices=[device]), 1)
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    now = utc_now_iso()
    good = [make_event(outbox, severity=i / 50, device_id=device, captured_at=now) for i in range(50)]
    for event in good:
        assert outbox.add_event(event)
    bad = make_event(outbox, device_id=device, captured_at=now)
    bad["bbox"] = [1, 2, 3, -4]                      # the server's schema check refuses it for good
    assert outbox.add_event(bad)
    cov = make_coverage() | {"device_id": device, "started_at": now, "ended_at": now}
    assert outbox.add_coverage(cov)
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password), ack_timeout_s=2.0), device,
                    outbox, HealthBoard())
    uplink.start()
    try:
        wait_for(lambda: outbox.stats()["queue_depth"] == 0, 30, "the server confirmed or rejected everything")
        time.sleep(2.5)                                  # past the ack timeout: nothing is sent again
    finally:
        uplink.stop()
    assert uplink.counters["confirmed"] == 51 and uplink.counters["rejected"] == 1
    assert uplink.counters["published"] == 52, "a rejected event must not be re-sent"
    rows = {r["id"]: r for r in outbox.rows("event", limit=100)}
    assert rows[bad["event_id"]]["rejected"] and all(rows[e["event_id"]]["rejected"] is None for e in good)
    with psycopg.connect(fresh_db) as conn:
        stored = {r[0] for r in conn.execute("SELECT event_id::text FROM sightings").fetchall()}
    assert stored == {e["event_id"] for e in good}


def test_a_clean_stop_waits_for_the_servers_confirmation(make_cfg, workers, mqtt_device, fresh_db,  # noqa: F811
                                                         service_info, tmp_path: Path) -> None:
    """A stop closes the drive's last coverage record just before the uplink stops: it is sent and confirmed on the
    way out, not left `sent` for `queue stats` and doctor to count until the next start. The farewell status says
    so too: it was built before the last ack was written, and the server showed the stopped box with 1 row
    queued for good."""
    device, password = mqtt_device()
    workers(make_cfg(devices=[device]), 1)
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password)), device, outbox, HealthBoard())
    uplink.start()
    try:
        wait_for(lambda: uplink.state == "connected", 30, "the uplink connected")
        now = utc_now_iso()
        assert outbox.add_coverage(make_coverage() | {"device_id": device, "started_at": now, "ended_at": now})
    finally:
        uplink.stop()
    assert outbox.stats()["queue_depth"] == 0 and uplink.counters["confirmed"] == 1
    assert json.loads(uplink.status_path.read_text())["state"] == "stopped"  # the box's own file says so too

    def stopped_row() -> tuple | None:
        with psycopg.connect(fresh_db) as conn:
            return conn.execute("SELECT state, queue_depth FROM devices WHERE id = %s AND state = 'stopped'",
                                (device,)).fetchone()

    wait_for(lambda: stopped_row() is not None, 30, "the server stored the farewell status")
    assert stopped_row() == ("stopped", 0)


def test_a_replayed_drive_the_server_refuses_is_reported_everywhere(make_cfg, workers, mqtt_device,  # noqa: F811
                                                                    service_info, tmp_path: Path) -> None:
    """The field case: a drive recorded 40 days ago, replayed with --uplink. The real server refuses what it
    sends as older than its ingest.horizon_days (30): replay exits EXIT_REJECTED naming the
    reason, and queue stats/ls, status and doctor call the rows rejected, not confirmed."""
    from typer.testing import CliRunner

    from edge_agent.cli import app
    from edge_agent.commands.run import EXIT_REJECTED
    from tests.test_pipeline import agent_toml, toy_model, write_recording

    device, password = mqtt_device()
    workers(make_cfg(devices=[device]), 1)
    drive = write_recording(tmp_path / "drive", seconds=2, start=datetime.now(UTC).replace(microsecond=0)
                            - timedelta(days=40))
    (tmp_path / "pw").write_text(password + "\n")
    config = str(agent_toml(tmp_path, toy_model(tmp_path / "toy.onnx"), device=device,
                            extra=f'[uplink]\nhost = "127.0.0.1"\nport = {service_info.mqtt_port}\ntls = false\n'
                                  f'password_file = "{tmp_path / "pw"}"\n'))
    args = ["replay", "--video", str(drive / "video.mp4"), "--nmea", str(drive / "drive.nmea"), "--config", config,
            "--uplink", "--drain-s", "60"]
    cli = CliRunner()
    table = cli.invoke(app, args, env={"COLUMNS": "200"})
    assert table.exit_code == EXIT_REJECTED, table.output
    row = next(line for line in table.stdout.splitlines() if line.strip("│ ").startswith("uplink"))
    assert "0 confirmed" in row and "rejected by the server, 0 unconfirmed" in row, row
    assert "captured_at: ... is older than 30 days" in table.stdout and "rejected by the server" in table.stderr
    stats = json.loads(cli.invoke(app, ["queue", "stats", "--config", config, "--json"]).stdout)
    first = stats["rejected"]
    assert first >= 1 and stats["queue_depth"] == 0
    assert stats["events"]["rejected"] + stats["coverage"]["rejected"] == first
    assert stats["events"]["confirmed"] == stats["coverage"]["confirmed"] == 0

    again = cli.invoke(app, [*args, "--json"])             # the same drive once more: counted per replay
    assert again.exit_code == EXIT_REJECTED, again.output
    drained = json.loads(again.stdout.strip().splitlines()[-1])["uplink"]
    assert (drained["unconfirmed"], drained["uplink"]["confirmed"], drained["rejected"]["count"]) == (0, 0, first)
    reasons = {r["reason"]: r["count"] for r in drained["rejected"]["reasons"]}
    assert reasons["captured_at: ... is older than 30 days"] == drained["rejected"]["events"] >= 1, reasons

    listed = json.loads(cli.invoke(app, ["queue", "ls", "--config", config, "--state", "rejected", "--json",
                                         "--kind", "event"]).stdout)
    assert listed and all(r["state"] == "rejected" and "older than 30 days" in r["rejected"] for r in listed)
    status = json.loads(cli.invoke(app, ["status", "--config", config, "--json"]).stdout)
    assert status["rejected"] == 2 * first and status["queue_depth"] == 0
    doctor = cli.invoke(app, ["doctor", "--config", config, "--json", "--only", "delivery"])
    assert doctor.exit_code == 1, doctor.output  # every event of the box refused, none through: red
    delivery = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["delivery"]
    assert delivery["level"] == "red" and "refused by the server in the last 24 h" in delivery["summary"]
    assert "older than 30 days (the server's ingest.horizon_days)" in delivery["summary"], delivery["summary"]
    assert delivery["data"]["rejected_recent"] == 2 * first


def quick_agent_and_worker(make_cfg, workers, mqtt_device, service_info, tmp_path: Path) -> tuple:  # noqa: F811
    """(device, server config, its one ingest worker, outbox, uplink not started) with half-second ack timeouts and
    heartbeats, for tests that take the server away and bring it back."""
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device])
    [worker] = workers(cfg, 1)
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password), ack_timeout_s=0.5,
                               heartbeat_s=0.5), device, outbox, HealthBoard())
    return device, cfg, worker, outbox, uplink


def test_an_agent_backing_off_resumes_as_soon_as_the_server_is_back(make_cfg, workers, mqtt_device,  # noqa: F811
                                                                     service_info, tmp_path: Path) -> None:
    """The fleet server away for 6 minutes: the agent's wait for an ack had doubled round after round, and its rows
    reached the map 4.5 minutes after the server was back (up to ack_timeout_max_s, 30 minutes, after a longer
    maintenance), fresh defects queued behind them. Its heartbeat now asks, and the server's ack says it is back."""
    device, cfg, worker, outbox, uplink = quick_agent_and_worker(make_cfg, workers, mqtt_device, service_info,
                                                                 tmp_path)
    uplink.start()
    try:
        wait_for(lambda: uplink.state == "connected", 30, "the uplink connected")
        worker.stop()  # the server goes away: what the agent sends now is lost
        for i in range(5):
            assert outbox.add_event(make_event(outbox, severity=i / 10, device_id=device, captured_at=utc_now_iso()))
        wait_for(lambda: uplink.flow.timeout_s >= 8, 60, "the agent backed off round after round")
        workers(cfg, 1)  # the server is back
        back = time.monotonic()
        wait_for(lambda: outbox.stats()["queue_depth"] == 0, 60, "the server confirmed everything")
        took = time.monotonic() - back
    finally:
        uplink.stop()
    print(f"confirmed {took:.1f} s after the server was back")
    assert took < 4, f"{took:.1f} s after the server was back (the backed-off wait was 8 s or more)"
    assert uplink.counters["server_back"] >= 1


def test_a_server_restored_from_a_backup_gets_back_what_it_had_confirmed(make_cfg, workers,  # noqa: F811
                                                                         mqtt_device, fresh_db, service_info,
                                                                         tmp_path: Path) -> None:
    """The database restored from last night's dump has lost what the boxes sent since, while each box still keeps
    it, confirmed: `fleet-server cmd resend --since` had no counterpart, and the events were gone for good. Now
    every box sends again what was confirmed since; the server stores each event once."""
    from fleet_server import commands

    device, password = mqtt_device()
    cfg = make_cfg(devices=[device])
    workers(cfg, 1)
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    backup = datetime.now(UTC) - timedelta(seconds=1)
    now = utc_now_iso()
    events = [make_event(outbox, device_id=device, captured_at=now) for _ in range(12)]
    for event in events:
        assert outbox.add_event(event)
    assert outbox.add_coverage(make_coverage() | {"device_id": device, "started_at": now, "ended_at": now})
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password)), device, outbox, HealthBoard())
    uplink.start()

    def stored() -> int:
        with psycopg.connect(fresh_db) as conn:
            return conn.execute("SELECT count(*) FROM sightings").fetchone()[0]

    try:
        wait_for(lambda: outbox.stats()["queue_depth"] == 0, 30, "the server confirmed everything")
        with psycopg.connect(fresh_db, autocommit=True) as conn:  # the restore: the dump held none of it
            conn.execute("TRUNCATE sightings, coverage, defects CASCADE")
        assert stored() == 0
        assert commands.resend(cfg, backup - timedelta(minutes=5), rejected=False)[:3] == ([device], [], [])
        wait_for(lambda: stored() == 12 and outbox.stats()["queue_depth"] == 0, 30, "the events stored again")
        # Twice: still each once. Its last status says its clock runs 3 h behind, so its window opens 3 h earlier.
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("UPDATE devices SET state_at = now(), last_status = jsonb_build_object('sent_at', "
                         "to_char((now() - interval '3 hours') AT TIME ZONE 'UTC', "
                         "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')) WHERE id = %s", (device,))
        commands.resend(cfg, backup - timedelta(minutes=5), rejected=False)
        wait_for(lambda: uplink.counters["confirmed"] >= 39, 30, "the second resend confirmed")
    finally:
        uplink.stop()
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM sightings").fetchone()[0] == 12
        assert conn.execute("SELECT count(DISTINCT event_id) FROM sightings").fetchone()[0] == 12
        assert conn.execute("SELECT count(*) FROM coverage").fetchone()[0] == 1
        results = [r[0] for r in conn.execute("SELECT payload FROM command_results WHERE device_id = %s AND "
                                              "name = 'resend'", (device,))]
    assert sorted(r["events"] for r in results) == [12, 12] and all(r["status"] == "queued" for r in results)
    earliest = min(datetime.fromisoformat(r["reason"].split(" since ")[1].split(" ")[0]) for r in results)
    assert backup - timedelta(hours=3, minutes=6) < earliest < backup - timedelta(hours=3, minutes=4)
    with pytest.raises(commands.CommandError, match="--since"):
        commands.resend(cfg, None, rejected=False)


def test_a_command_answered_while_no_ingest_worker_listens_reaches_the_server_once(
        make_cfg, workers, mqtt_device, service_info, tmp_path: Path) -> None:  # noqa: F811
    """Results travel only through the workers' shared subscription, which keeps nothing for a group with no
    member connected: a soak with broker and server restarts left 7 of 28 commands answered on the box and never
    on the server. The box now sends a final result again until the server acks its command_id; the server
    stores a repeat once."""
    from roadmon_contract import topics
    from tests.test_uplink import ServerClient

    device, cfg, worker, outbox, uplink = quick_agent_and_worker(make_cfg, workers, mqtt_device, service_info,
                                                                 tmp_path)
    uplink.on_command("echo", lambda payload: {"ok": True, "echo": payload.get("n")})
    sender = ServerClient(service_info.mqtt_port, service_info.server_password)
    dsn = cfg.database.resolve_dsn()

    def stored(command_id: str) -> int:
        with psycopg.connect(dsn) as conn:
            return conn.execute("SELECT count(*) FROM command_results WHERE device_id = %s "
                                "AND payload->>'command_id' = %s", (device, command_id)).fetchone()[0]

    uplink.start()
    try:
        wait_for(lambda: uplink.state == "connected", 30, "the uplink connected")
        assert outbox.add_event(make_event(outbox, device_id=device, captured_at=utc_now_iso()))
        wait_for(lambda: outbox.stats()["queue_depth"] == 0, 30, "an ack from this server")
        worker.stop()  # no worker in the group: the result published now is lost at the broker
        sender.client.subscribe([(topics.cmd_result(device, "echo"), 1)])
        sender.client.publish(topics.cmd(device, "echo"), json.dumps({"n": 7, "command_id": "cmd-lost-1"}), qos=1)
        wait_for(lambda: sender.last(topics.cmd_result(device, "echo")) is not None, 10, "the box answered")
        time.sleep(1.0)
        assert stored("cmd-lost-1") == 0
        workers(cfg, 1)  # the server is back
        wait_for(lambda: stored("cmd-lost-1") == 1, 30, "the result, sent again, stored")
        time.sleep(1.0)
        sent = len([t for t, _ in sender.messages if t == topics.cmd_result(device, "echo")])
        time.sleep(3.0)  # ack timeouts more: acked, so nothing is sent, or stored, again
        assert stored("cmd-lost-1") == 1
        assert len([t for t, _ in sender.messages if t == topics.cmd_result(device, "echo")]) == sent
    finally:
        uplink.stop()
        sender.close()
