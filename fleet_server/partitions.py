"""Monthly partitions of `sightings` and `coverage` (migration 015): make upcoming months, drop old ones.

A month's partition holds the rows whose id (UUIDv7) was made in that month (UTC). `maintain` makes the
partitions of the current month and `retention.premake_months` ahead (the ingest workers do that too, every
few minutes, so a missed job never sends rows to the default partition), and drops whole months older than
`retention.sightings_months` / `retention.coverage_months` (0 keeps everything), with the default partition's
rows of that age, and deletes the misses, audit rows and command results past theirs. Run it daily: `fleet-server
partitions` (k8s/partitions-cronjob.yaml); the ingest workers run it once a day too, so that a host without the
job (systemd, Compose) deletes what its retention says.

The id's month is the box's clock when it wrote the row, and a Raspberry Pi has no clock chip: until NTP or GNSS
sets it, it runs from its last shutdown's time (fake-hwclock) or an image's build date, months behind. So a
month is dropped only when every row in it is past the retention by its own time (`captured_at`, `ended_at`);
one that holds younger rows keeps them, loses the old ones, and is tried again the next day.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg

from fleet_server.config import RetentionConfig
from fleet_server.db import one_row

log = logging.getLogger(__name__)
MAINTAIN_LOCK = 0x726D_7265  # advisory lock: one process applies the retention at a time
TABLES = {"sightings": "captured_at", "coverage": "ended_at"}  # table -> the time its default rows age by
_MONTHLY = re.compile(r"^(?P<table>[a-z]+)_p(?P<year>\d{4})_(?P<month>\d{2})$")


@dataclass
class Report:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    default_rows_deleted: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)  # partition past retention -> its younger rows, kept
    rows_deleted: dict[str, int] = field(default_factory=dict)  # other tables' rows past their retention


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def month_of(t: datetime) -> date:
    t = t.astimezone(UTC)
    return date(t.year, t.month, 1)


def monthly(conn: psycopg.Connection, table: str) -> dict[date, str]:
    """TABLE's monthly partitions by their first day."""
    rows = conn.execute("""SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                           WHERE i.inhparent = %s::regclass""", (table,)).fetchall()
    out = {}
    for (name,) in rows:
        m = _MONTHLY.match(name)
        if m and m["table"] == table:
            out[date(int(m["year"]), int(m["month"]), 1)] = name
    return out


def ensure_upcoming(conn: psycopg.Connection, premake_months: int, now: datetime | None = None,
                    dry_run: bool = False) -> list[str]:
    """Make the partitions of this month and PREMAKE_MONTHS ahead that are missing; returns their names (with
    DRY_RUN, the names it would make: a dry run said "created 0" before a real one made six)."""
    this = month_of(now or datetime.now(UTC))
    created = []
    for table in TABLES:
        have = monthly(conn, table)
        for k in range(premake_months + 1):
            month = add_months(this, k)
            if month not in have and (dry_run or one_row(conn.execute(
                    "SELECT roadmon_create_month_partition(%s, %s)", (table, month)))[0]):
                created.append(f"{table}_p{month:%Y_%m}")
    if created and not dry_run:
        log.info("created partitions %s", ", ".join(created))
    return created


def drop_expired(conn: psycopg.Connection, retention: RetentionConfig, now: datetime | None = None,
                 dry_run: bool = False) -> Report:
    """Drop the monthly partitions wholly older than the retention (keeping the current month and that many
    whole months before it), and delete the default partition's rows older than that too."""
    report = Report()
    this = month_of(now or datetime.now(UTC))
    for table, aged_by in TABLES.items():
        keep = retention.sightings_months if table == "sightings" else retention.coverage_months
        if keep <= 0:
            continue
        cutoff = add_months(this, -keep)  # partitions ending on or before this day go
        since = datetime(cutoff.year, cutoff.month, 1, tzinfo=UTC)
        for month, name in sorted(monthly(conn, table).items()):
            if add_months(month, 1) > cutoff:
                continue
            young = one_row(conn.execute(f'SELECT count(*) FROM "{name}" WHERE {aged_by} >= %s', (since,)))[0]
            if young:
                report.kept[name] = young
                log.warning("%s is past retention but holds %d rows with %s since %s (written by a box whose clock "
                            "was behind): kept, its older rows deleted", name, young, aged_by, since.date())
                if not dry_run:
                    conn.execute(f'DELETE FROM "{name}" WHERE {aged_by} < %s', (since,))
                continue
            report.dropped.append(name)
            if not dry_run:
                with conn.transaction():
                    conn.execute(f'ALTER TABLE {table} DETACH PARTITION "{name}"')
                    conn.execute(f'DROP TABLE "{name}"')
        # A dry run counts them: it said nothing of rows a real run then deleted.
        n = (one_row(conn.execute(f"SELECT count(*) FROM {table}_pdefault WHERE {aged_by} < %s", (since,)))[0]
             if dry_run else conn.execute(f"DELETE FROM {table}_pdefault WHERE {aged_by} < %s", (since,)).rowcount)
        if n:
            report.default_rows_deleted[table] = n
    if report.dropped and not dry_run:
        log.info("dropped partitions past retention: %s", ", ".join(report.dropped))
    report.rows_deleted = delete_expired_rows(conn, retention, now or datetime.now(UTC), dry_run)
    return report


def delete_expired_rows(conn: psycopg.Connection, retention: RetentionConfig, now: datetime,
                        dry_run: bool = False) -> dict[str, int]:
    """Rows of the tables that are not partitioned, past their retention, by table. A miss is a vehicle's pass by a
    defect with its time, so it goes with the coverage of its month (the defects' states it led to stay)."""
    cutoffs: dict[str, tuple[str, datetime]] = {}
    if retention.coverage_months > 0:
        month = add_months(month_of(now), -retention.coverage_months)
        cutoffs["defect_misses"] = ("ended_at", datetime(month.year, month.month, 1, tzinfo=UTC))
    if retention.audit_days > 0:
        cutoffs["audit_log"] = ("at", now - timedelta(days=retention.audit_days))
    if retention.command_results_days > 0:
        cutoffs["command_results"] = ("received_at", now - timedelta(days=retention.command_results_days))
    out = {}
    for table, (column, cutoff) in cutoffs.items():
        sql = f"{'SELECT count(*)' if dry_run else 'DELETE'} FROM {table} WHERE {column} < %s"
        cur = conn.execute(sql, (cutoff,))
        n = one_row(cur)[0] if dry_run else cur.rowcount
        if n:
            out[table] = n
            if not dry_run:
                log.info("deleted %d rows of %s older than %s", n, table, cutoff.isoformat())
    return out


def maintain_if_free(conn: psycopg.Connection, retention: RetentionConfig) -> Report | None:
    """maintain(), unless another process is at it (then None)."""
    if not one_row(conn.execute("SELECT pg_try_advisory_lock(%s)", (MAINTAIN_LOCK,)))[0]:
        return None
    try:
        return maintain(conn, retention)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MAINTAIN_LOCK,))


def maintain(conn: psycopg.Connection, retention: RetentionConfig, now: datetime | None = None,
             dry_run: bool = False) -> Report:
    """Upcoming partitions made, expired ones dropped (the daily job)."""
    created = ensure_upcoming(conn, retention.premake_months, now, dry_run)
    report = drop_expired(conn, retention, now, dry_run)
    report.created = created
    return report
