"""The API's reads on a real streaming replica: a primary and a hot standby of our own (pg_basebackup), so the
replication lag, a paused replay and a replica that is down are real."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from fleet_server.api import create_app
from fleet_server.config import AggregateConfig
from fleet_server.migrate import migrate
from fleet_server.store import Batch, store_batch
from scripts import services
from tests.conftest import free_port, on_a_free_port
from tests.server_fixtures import TINY_JPEG_B64, make_event, server_config, token


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[services.Postgres, services.Replica]]:
    """A small primary (the shared cluster holds every test's database: gigabytes to copy) and its replica."""
    state = tmp_path_factory.mktemp("replicated")

    def start(cluster: services.Postgres) -> services.Postgres:
        cluster.up()
        return cluster

    primary = on_a_free_port(lambda port: start(services.Postgres(state, port)))
    migrate(primary.dsn)
    replica = on_a_free_port(lambda port: start(services.Replica(primary, port)))
    yield primary, replica
    replica.stop()
    primary.down()
    for cluster in (replica, primary):
        shutil.rmtree(cluster.base, ignore_errors=True)


@pytest.fixture(scope="module")
def broker_port() -> Iterator[int]:
    """Something listening where the config's broker is, so that /health's status is about the databases."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def api(primary: services.Postgres, read_dsn: str, tmp: Path, broker_port: int, **database: float) -> TestClient:
    (tmp / "read-dsn").parent.mkdir(parents=True, exist_ok=True)
    (tmp / "read-dsn").write_text(read_dsn)
    cfg = server_config(primary.dsn, "127.0.0.1", broker_port, "server", "-", tmp / "server",
                        database={"read_dsn_file": str(tmp / "read-dsn"), **database})
    return TestClient(create_app(cfg))


def served(by: str) -> float:
    return REGISTRY.get_sample_value("road_api_reads_total", {"served_by": by}) or 0


def replica_up() -> float | None:
    return REGISTRY.get_sample_value("road_api_read_replica_up", {"pool": "fleet-api-read"})


def caught_up(replica: services.Replica, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if replica._psql("SELECT pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()") == "t":
            return
        time.sleep(0.05)
    raise AssertionError("the replica did not catch up")


def severity(client: TestClient, headers: dict, defect_id: int) -> float:
    return client.get(f"/api/v1/defects/{defect_id}", headers=headers).json()["properties"]["severity"]


def test_reads_come_from_the_replica_and_include_this_process_writes(pair, broker_port, tmp_path: Path) -> None:
    primary, replica = pair
    client = api(primary, replica.dsn, tmp_path, broker_port, read_max_lag_s=60, read_retry_s=0.3)
    viewer = {"Authorization": f"Bearer {token(primary.dsn, 'viewer', 'vera')}"}
    manager = {"Authorization": f"Bearer {token(primary.dsn, 'manager', 'maria')}"}
    device = {"Authorization": f"Bearer {token(primary.dsn, 'device', 'veh-r', device_id='veh-r')}"}
    with client:
        # A write through this process, read back at once: the replica has it or the primary answers.
        assert client.post("/api/v1/detections", json=make_event("veh-r", 48.1, 11.5, severity=0.4),
                           headers=device).status_code == 202
        features = client.get("/api/v1/defects", headers=viewer).json()["features"]
        assert len(features) == 1
        defect_id = features[0]["id"]

        caught_up(replica)
        # The replica's pool opens in the background; on a loaded machine its first connection can take longer
        # than a read waits for it (the primary answers then): wait until it serves.
        deadline = time.monotonic() + 15
        while client.get("/health").json()["read_replica"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.2)
        before = served("replica")
        assert severity(client, viewer, defect_id) == pytest.approx(0.4)
        assert served("replica") == before + 1
        assert client.get("/health").json()["read_replica"] == "ok"

        # Replay paused, a change made elsewhere (another API process, ingest) is not seen: the read really
        # came from the replica, stale within read_max_lag_s.
        replica._psql("SELECT pg_wal_replay_pause()")
        try:
            with psycopg.connect(primary.dsn, autocommit=True) as conn:
                conn.execute("UPDATE defects SET severity = 0.9 WHERE id = %s", (defect_id,))
            assert severity(client, viewer, defect_id) == pytest.approx(0.4)
            # The list's sync_token is the replica's view: a dashboard asking what was written since hears of
            # this change once it is replayed.
            stale = client.get("/api/v1/defects", headers=viewer).json()
            assert stale["features"][0]["properties"]["severity"] == pytest.approx(0.4)

            # Something stored elsewhere after the replica's last replay, linked from a fresher page: a defect
            # and a sighting's thumbnail the replica does not have yet are read from the primary, not a 404.
            with psycopg.connect(primary.dsn, autocommit=True) as conn:
                fresh = make_event("veh-other", 48.3, 11.9, thumbnail_jpeg_b64=TINY_JPEG_B64)
                store_batch(conn, Batch(events=[(fresh, datetime.now(UTC))]), AggregateConfig())
                fresh_defect = conn.execute("SELECT defect_id FROM sightings WHERE event_id = %s",
                                            (fresh["event_id"],)).fetchone()[0]
            detail = client.get(f"/api/v1/defects/{fresh_defect}", headers=viewer)
            assert detail.status_code == 200
            thumb = client.get(detail.json()["sightings"][0]["thumbnail_url"], headers=viewer)
            assert thumb.status_code == 200 and thumb.content.startswith(b"\xff\xd8")
            assert client.get("/api/v1/defects/999999", headers=viewer).status_code == 404

            # A manager's change through this process is seen by the next read: the replica has not replayed
            # it, so the primary answers (and has the other change too).
            done = client.patch(f"/api/v1/defects/{defect_id}", json={"status": "scheduled"}, headers=manager)
            assert done.status_code == 200
            before = served("primary")
            detail = client.get(f"/api/v1/defects/{defect_id}", headers=viewer).json()
            assert detail["properties"]["status"] == "scheduled"
            assert detail["properties"]["severity"] == pytest.approx(0.9)
            assert served("primary") == before + 1

            # Another API process with a tight lag limit: the paused replica is too far behind for it.
            time.sleep(1.2)
            strict = api(primary, replica.dsn, tmp_path / "strict", broker_port, read_max_lag_s=1)
            with strict:
                assert severity(strict, viewer, defect_id) == pytest.approx(0.9)
                assert strict.get("/health").json()["read_replica"].startswith("lagging")
        finally:
            replica._psql("SELECT pg_wal_replay_resume()")
        caught_up(replica)
        before = served("replica")
        assert severity(client, viewer, defect_id) == pytest.approx(0.9)
        assert served("replica") == before + 1
        changes = client.get("/api/v1/defects", params={"since_token": stale["sync_token"]}, headers=viewer).json()
        assert defect_id in [f["id"] for f in changes["features"]]


def test_a_replica_that_is_down_leaves_the_api_answering(pair, broker_port, tmp_path: Path) -> None:
    primary, replica = pair
    viewer = {"Authorization": f"Bearer {token(primary.dsn, 'viewer', 'vic')}"}
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        expected = conn.execute("SELECT count(*) FROM defects").fetchone()[0]

    # Configured but never reachable: the API starts and answers from the primary.
    nowhere = replica.dsn.replace(f":{replica.port}/", f":{free_port()}/")
    with api(primary, nowhere, tmp_path / "nowhere", broker_port, read_retry_s=0.3) as client:
        assert len(client.get("/api/v1/defects", headers=viewer).json()["features"]) == expected
        assert client.get("/health").json()["read_replica"] == "unreachable"

    client = api(primary, replica.dsn, tmp_path, broker_port, read_retry_s=0.3)
    with client:
        caught_up(replica)
        assert client.get("/health").json()["read_replica"] == "ok"
        replica.down()
        try:
            t0 = time.monotonic()
            for _ in range(20):
                assert len(client.get("/api/v1/defects", headers=viewer).json()["features"]) == expected
            assert time.monotonic() - t0 < 10, "a dead replica slowed every read"
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["read_replica"] == "unreachable"
            assert replica_up() == 0
        finally:
            replica._start()
        caught_up(replica)
        # Back: reads return to the replica once its pool has a live connection again (it reconnects with
        # backoff, and read_retry_s passes between tries), within seconds.
        deadline = time.monotonic() + 15
        while True:
            before = served("replica")
            assert len(client.get("/api/v1/defects", headers=viewer).json()["features"]) == expected
            if served("replica") == before + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert served("replica") == before + 1, "reads did not return to the replica"
        assert replica_up() == 1


def test_a_replica_cut_off_from_its_primary_is_not_called_caught_up(pair, broker_port, tmp_path: Path) -> None:
    """A replica whose WAL receiver is gone has replayed all it received: it read as 0 s behind and served
    frozen data for as long as it stayed cut off (an outside test of the dashboard's changes). Without a
    receiver its lag is the age of its last replayed change, and past read_max_lag_s the primary serves."""
    primary, replica = pair
    viewer = {"Authorization": f"Bearer {token(primary.dsn, 'viewer', 'cut')}"}
    conninfo = replica._psql("SHOW primary_conninfo")
    with psycopg.connect(primary.dsn, autocommit=True) as conn:
        store_batch(conn, Batch(events=[(make_event("veh-cut", 47.9, 11.1, severity=0.3), datetime.now(UTC))]),
                    AggregateConfig())
        defect_id = conn.execute("SELECT max(id) FROM defects").fetchone()[0]
    caught_up(replica)
    client = api(primary, replica.dsn, tmp_path, broker_port, read_max_lag_s=1, read_retry_s=0.3)
    with client:
        replica._psql("ALTER SYSTEM SET primary_conninfo = ''")
        replica._psql("SELECT pg_reload_conf()")
        try:
            deadline = time.monotonic() + 15
            while replica._psql("SELECT count(*) FROM pg_stat_wal_receiver") != "0" and time.monotonic() < deadline:
                time.sleep(0.1)
            with psycopg.connect(primary.dsn, autocommit=True) as conn:
                conn.execute("UPDATE defects SET severity = 0.8 WHERE id = %s", (defect_id,))
            time.sleep(1.5)  # its last replayed change is now older than read_max_lag_s
            assert severity(client, viewer, defect_id) == pytest.approx(0.8)  # the primary answered
            assert client.get("/health").json()["read_replica"].startswith("lagging")
        finally:
            replica._psql(f"ALTER SYSTEM SET primary_conninfo = '{conninfo.replace(chr(39), chr(39) * 2)}'")
            replica._psql("SELECT pg_reload_conf()")
            with psycopg.connect(primary.dsn, autocommit=True) as conn:  # the other tests count the defects
                conn.execute("DELETE FROM sightings WHERE defect_id = %s", (defect_id,))
                conn.execute("DELETE FROM defects WHERE id = %s", (defect_id,))
        caught_up(replica)


def test_write_positions_compare_as_numbers_not_text() -> None:
    from fleet_server.replica import _lsn_value

    assert _lsn_value("1/0") > _lsn_value("0/FFFFFFFF") > _lsn_value("0/A0") > _lsn_value("0/9F")
