"""Monthly partitions of sightings and coverage (migration 015) on the real PostGIS: existing rows migrate,
rows of a new month land in its partition, retention drops whole old months."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from fleet_server import partitions
from fleet_server.cli import app
from fleet_server.config import AggregateConfig, RetentionConfig
from fleet_server.migrate import migrate
from fleet_server.store import Batch, store_batch
from tests.server_fixtures import make_cfg, make_coverage, make_event, wait_for, workers

__all__ = ["make_cfg", "workers"]


def uuid7_at(t: datetime) -> str:
    """A UUIDv7 made at T."""
    ms = int(t.timestamp() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def where(conn: psycopg.Connection, table: str, key: str, value: str) -> str:
    return conn.execute(f"SELECT tableoid::regclass::text FROM {table} WHERE {key} = %s", (value,)).fetchone()[0]


def _event(at: datetime, device: str = "veh-p", lat: float = 48.1, lon: float = 11.5) -> dict:
    return make_event(device, lat, lon, at=at, event_id=uuid7_at(at))


@pytest.mark.services
def test_existing_rows_migrate_and_new_months_land_in_their_partition(fresh_db) -> None:
    migrate(fresh_db, up_to=14)  # the schema before the partitions
    now = datetime.now(UTC)
    old_at = now - timedelta(days=70)
    old_event = _event(old_at)
    old_cov = make_coverage("veh-p", [(48.1, 11.49), (48.1, 11.51)], old_at, old_at + timedelta(seconds=30))
    old_cov["coverage_id"] = uuid7_at(old_at)
    agg = AggregateConfig()
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # The rows as the server of that schema wrote them (today's store and aggregation use columns of later
        # migrations).
        [(defect_id,)] = conn.execute("""INSERT INTO defects (class, geom, h_accuracy_m, first_seen, last_seen,
                                                               sighting_count, vehicle_count, pass_count)
                                          VALUES ('pothole', ST_GeogFromText('POINT(11.5 48.1)'), 2.0, %s, %s, 1, 1, 1)
                                          RETURNING id""", (old_at, old_at)).fetchall()
        conn.execute("""INSERT INTO sightings (event_id, device_id, seq, captured_at, received_at, class, confidence,
                                               geom, h_accuracy_m, payload, defect_id)
                        VALUES (%s, 'veh-p', 0, %s, %s, 'pothole', 0.8, ST_GeogFromText('POINT(11.5 48.1)'), 2.0,
                                %s, %s)""", (old_event["event_id"], old_at, now, Jsonb(old_event), defect_id))
        conn.execute("""INSERT INTO coverage (coverage_id, device_id, started_at, ended_at, received_at, line,
                                               detector_active, model_sha256, payload)
                        VALUES (%s, %s, %s, %s, now(), ST_GeogFromText('LINESTRING(11.49 48.1, 11.51 48.1)'),
                                true, %s, %s)""",
                     (old_cov["coverage_id"], old_cov["device_id"], old_at, old_at + timedelta(seconds=30),
                      old_cov["model_sha256"], Jsonb(old_cov)))
        conn.execute("INSERT INTO defect_misses SELECT id, %s, 'veh-p', now(), now() FROM defects",
                     (old_cov["coverage_id"],))
        before = conn.execute("SELECT count(*), min(defect_id) FROM sightings").fetchone()
    migrate(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), min(defect_id) FROM sightings").fetchone() == before
        old_month = partitions.month_of(old_at)
        assert where(conn, "sightings", "event_id", old_event["event_id"]) == f"sightings_p{old_month:%Y_%m}"
        assert where(conn, "coverage", "coverage_id", old_cov["coverage_id"]) == f"coverage_p{old_month:%Y_%m}"
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'sightings'").fetchone()[0] == "p"
        # Every month from the oldest row to three ahead exists.
        have = partitions.monthly(conn, "sightings")
        this = partitions.month_of(now)
        assert all(partitions.add_months(old_month, k) in have
                   for k in range((this.year - old_month.year) * 12 + this.month - old_month.month + 4))

        # New rows land in the current month; the same event again is still one row (ON CONFLICT (event_id)).
        new_event = _event(now, lon=11.50001)
        stored = store_batch(conn, Batch(events=[(new_event, now)]), agg)
        again = store_batch(conn, Batch(events=[(new_event, now)]), agg)
        assert stored.new_events == {new_event["event_id"]} and again.new_events == set()
        assert where(conn, "sightings", "event_id", new_event["event_id"]) == f"sightings_p{this:%Y_%m}"
        # It joined the migrated defect (the foreign key and the spatial match work across partitions).
        assert conn.execute("SELECT count(DISTINCT defect_id) FROM sightings").fetchone()[0] == 1

        # An id from beyond the premade months waits in the default partition until its month is made.
        far = datetime(this.year + 1, this.month, 15, tzinfo=UTC) + timedelta(days=62)
        far_event = _event(far, lat=48.3)
        store_batch(conn, Batch(events=[(far_event, now)]), agg)
        assert where(conn, "sightings", "event_id", far_event["event_id"]) == "sightings_pdefault"
        made = partitions.ensure_upcoming(conn, premake_months=20)
        far_month = partitions.month_of(far)
        assert f"sightings_p{far_month:%Y_%m}" in made
        assert where(conn, "sightings", "event_id", far_event["event_id"]) == f"sightings_p{far_month:%Y_%m}"
        assert partitions.ensure_upcoming(conn, premake_months=20) == []


@pytest.mark.services
def test_retention_drops_whole_old_months(fresh_db) -> None:
    migrate(fresh_db)
    now = datetime.now(UTC)
    this = partitions.month_of(now)
    at = {k: datetime.combine(partitions.add_months(this, -k), datetime.min.time(), UTC) + timedelta(days=3)
          for k in (0, 1, 2, 5)}
    agg = RetentionConfig()
    events = {k: _event(t, lat=48.1 + k * 0.01) for k, t in at.items()}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        partitions.ensure_upcoming(conn, 3, now=at[5])  # the months of the older rows
        store_batch(conn, Batch(events=[(e, now) for e in events.values()]), AggregateConfig())
        cov = make_coverage("veh-p", [(48.2, 11.49), (48.2, 11.51)], at[5], at[5] + timedelta(seconds=30))
        cov["coverage_id"] = uuid7_at(at[5])
        store_batch(conn, Batch(coverage=[(cov, now)]), AggregateConfig())
        assert conn.execute("SELECT count(*) FROM sightings").fetchone()[0] == 4
        stray = _event(at[5] - timedelta(days=100), lat=48.2)  # a month without a partition: the default one
        store_batch(conn, Batch(events=[(stray, now)]), AggregateConfig())
        assert where(conn, "sightings", "event_id", stray["event_id"]) == "sightings_pdefault"

        # Keep everything by default.
        assert partitions.maintain(conn, agg).dropped == []
        # Keep 2 whole months before this one: the month 5 back goes (and everything older), 2 back stays.
        dry = partitions.maintain(conn, RetentionConfig(sightings_months=2, coverage_months=2, premake_months=5),
                                  dry_run=True)
        far = f"sightings_p{partitions.add_months(this, 5):%Y_%m}"
        assert far in dry.created and far not in partitions.monthly(conn, "sightings").values()  # said, not made
        assert f"sightings_p{partitions.add_months(this, -5):%Y_%m}" in dry.dropped
        assert dry.default_rows_deleted == {"sightings": 1}  # a dry run said nothing of them
        assert conn.execute("SELECT count(*) FROM sightings").fetchone()[0] == 5
        report = partitions.maintain(conn, RetentionConfig(sightings_months=2, coverage_months=2))
        assert report.dropped == dry.dropped and report.default_rows_deleted == {"sightings": 1}
        assert all(partitions.add_months(m, 1) <= partitions.add_months(this, -2)
                   for m in (date(int(n[-7:-3]), int(n[-2:]), 1) for n in report.dropped))
        left = {r[0] for r in conn.execute("SELECT event_id::text FROM sightings")}
        assert left == {events[k]["event_id"] for k in (0, 1, 2)}
        assert conn.execute("SELECT count(*) FROM coverage").fetchone()[0] == 0
        assert f"sightings_p{partitions.add_months(this, -2):%Y_%m}" in partitions.monthly(conn, "sightings").values()


@pytest.mark.services
def test_retention_keeps_rows_a_box_with_its_clock_behind_wrote(fresh_db) -> None:
    """A Pi without a clock chip runs from its image's build date until NTP or GNSS sets it: the ids it makes
    (UUIDv7, the box's clock) fall in an old month while the rows were captured today (GNSS time). Dropping that
    month by id deleted fresh sightings; now it keeps them, deletes the month's old rows and says so."""
    migrate(fresh_db)
    now = datetime.now(UTC)
    old_month = datetime.combine(partitions.add_months(partitions.month_of(now), -5), datetime.min.time(), UTC)
    truly_old = _event(old_month + timedelta(days=2), lat=48.10)
    fresh = make_event("veh-p", 48.11, 11.5, at=now - timedelta(hours=1),
                       event_id=uuid7_at(old_month + timedelta(days=3)))  # made by a clock months behind
    retention = RetentionConfig(sightings_months=2, coverage_months=2)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        partitions.ensure_upcoming(conn, 6, now=old_month)
        store_batch(conn, Batch(events=[(truly_old, now), (fresh, now)]), AggregateConfig())
        name = where(conn, "sightings", "event_id", fresh["event_id"])
        assert name == f"sightings_p{old_month:%Y_%m}"

        report = partitions.maintain(conn, retention)
        left = {r[0] for r in conn.execute("SELECT event_id::text FROM sightings")}
        assert left == {fresh["event_id"]}
        assert name not in report.dropped and report.kept == {name: 1}
        assert partitions.maintain(conn, retention, dry_run=True).kept == {name: 1}  # until it ages out too


@pytest.mark.services
def test_partitions_command(make_cfg, monkeypatch) -> None:
    cfg = make_cfg()
    monkeypatch.setenv("ROADMON_DATABASE_DSN", cfg.database.resolve_dsn())
    result = CliRunner().invoke(app, ["partitions", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["dropped"] == [] and out["dry_run"] is False


def test_a_server_refuses_a_horizon_its_retention_would_delete() -> None:
    """With horizon_days 30 and one month kept, a box back on 1 March delivered January's events: stored, acked,
    and deleted by the next daily run (its queue said confirmed). Such a config now fails at start."""
    from fleet_server.config import parse
    from roadmon_contract.config_base import ConfigError

    with pytest.raises(ConfigError) as refused:
        parse({"ingest": {"horizon_days": 30}, "retention": {"coverage_months": 1}})
    assert "ingest.horizon_days (30)" in str(refused.value) and "retention.coverage_months (1)" in str(refused.value)
    assert "28 days" in str(refused.value)
    parse({"ingest": {"horizon_days": 28}, "retention": {"sightings_months": 1, "coverage_months": 1}})
    parse({"ingest": {"horizon_days": 30}, "retention": {"sightings_months": 2, "coverage_months": 2}})
    parse({"ingest": {"horizon_days": 3650}})  # keeps everything: any horizon
    with pytest.raises(ConfigError):
        parse({"ingest": {"horizon_days": 60}, "retention": {"sightings_months": 2, "coverage_months": 3}})


@pytest.mark.services
def test_passes_audit_rows_and_answers_past_their_retention_go(make_cfg, workers) -> None:
    """A miss (a vehicle's pass by a defect, with its time) outlived the coverage it came from, and the audit log
    and the boxes' answers were never deleted; a host without the daily job (systemd, Compose) deleted nothing at
    all (a data-protection review). The ingest workers apply the retention too."""
    cfg = make_cfg(retention={"coverage_months": 2, "audit_days": 30, "command_results_days": 7})
    dsn = cfg.database.resolve_dsn()
    now = datetime.now(UTC)
    old_pass = datetime.combine(partitions.add_months(partitions.month_of(now), -4), datetime.min.time(), UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        store_batch(conn, Batch(events=[(_event(now - timedelta(hours=1)), now)]), AggregateConfig())
        defect = conn.execute("SELECT id FROM defects").fetchone()[0]
        for at in (old_pass, now - timedelta(days=1)):
            conn.execute("INSERT INTO defect_misses (defect_id, coverage_id, device_id, started_at, ended_at) "
                         "VALUES (%s, %s, 'veh-p', %s, %s)", (defect, uuid7_at(at), at, at + timedelta(seconds=20)))
        for days in (40, 1):
            conn.execute("INSERT INTO audit_log (at, who, method, path, status) VALUES (%s, 'viewer v', 'GET', "
                         "'/api/v1/coverage', 200)", (now - timedelta(days=days),))
            conn.execute("INSERT INTO command_results (device_id, name, received_at, payload) VALUES "
                         "('veh-p', 'resend', %s, '{}')", (now - timedelta(days=days),))

        def left() -> dict[str, int]:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("defect_misses", "audit_log", "command_results")}

        dry = partitions.maintain(conn, cfg.retention, dry_run=True)
        assert dry.rows_deleted == {"defect_misses": 1, "audit_log": 1, "command_results": 1}
        assert left() == {"defect_misses": 2, "audit_log": 2, "command_results": 2}
        workers(cfg)  # a worker applies [retention] as it starts
        assert wait_for(lambda: left() == {"defect_misses": 1, "audit_log": 1, "command_results": 1}), left()
        assert conn.execute("SELECT ended_at > now() - interval '2 days' FROM defect_misses").fetchone()[0]
