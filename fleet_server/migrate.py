"""Schema migrations: numbered SQL files in fleet_server/migrations, applied once each, in order.

`schema_version` records what ran, with each file's sha256: a released migration is never edited (022 once was,
and servers that had applied the first text never got the second's columns), so a file that differs from what
was applied stops the migration, naming it. Each file runs in its own transaction under an advisory lock, so two
servers starting at once do not apply the same file twice.

A migration waits for its table locks at most LOCK_TIMEOUT_S at a time: every API read and ingest write queues
behind a waiting ALTER TABLE, so a report left open in a transaction (or a nightly pg_dump) stalled the whole
API for as long as it lasted. It tries again, LOCK_ATTEMPTS times, and then stops naming the sessions in the way.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from importlib import resources

import psycopg

from fleet_server.db import libpq_timeout, one_row

log = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x526D4D67  # any constant shared by every server of this schema
LOCK_TIMEOUT_S = 3.0
LOCK_ATTEMPTS = 20  # a minute and more of trying, between which the API and ingest go on
RETRY_PAUSE_S = 2.0
BLOCKERS = """
SELECT pid, usename, application_name, state, round(extract(epoch FROM now() - xact_start)), left(query, 80)
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND datname = current_database() AND xact_start < now() - interval '1 second'
ORDER BY xact_start LIMIT 5
"""


class MigrationError(RuntimeError):
    """A migration cannot run: an applied file was edited, or its tables stayed locked."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    out = []
    for entry in resources.files("fleet_server.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            out.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(out, key=lambda m: m.version)


def applied(conn: psycopg.Connection) -> dict[int, str | None]:
    """Applied versions and the sha256 of the text applied (None: applied before hashes were kept)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, name text NOT NULL, "
                 "applied_at timestamptz NOT NULL DEFAULT now())")
    conn.execute("ALTER TABLE schema_version ADD COLUMN IF NOT EXISTS sha256 text")
    return dict(conn.execute("SELECT version, sha256 FROM schema_version").fetchall())


def _check_unchanged(have: dict[int, str | None], migrations: list[Migration]) -> None:
    for mig in migrations:
        if have.get(mig.version) not in (None, mig.sha256):
            raise MigrationError(
                f"migration {mig.version:03d}_{mig.name}.sql differs from the text this database applied: a "
                "migration is never edited once released (a database that ran the first text would not get the "
                "second); put the change in a new migration, or restore the file")


def _apply(conn: psycopg.Connection, mig: Migration) -> None:
    """Run MIG in one transaction, waiting LOCK_TIMEOUT_S at a time for its locks."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT_S * 1000)}ms'")
                conn.execute(mig.sql)
                conn.execute("INSERT INTO schema_version (version, name, sha256) VALUES (%s, %s, %s)",
                             (mig.version, mig.name, mig.sha256))
            return
        except psycopg.errors.LockNotAvailable:
            blockers = "; ".join(f"pid {pid} ({user}, {app or 'no application name'}, {state}, in a transaction "
                                 f"for {age} s: {query!r})" for pid, user, app, state, age, query
                                 in conn.execute(BLOCKERS).fetchall()) or "none left"
            if attempt == LOCK_ATTEMPTS:
                raise MigrationError(
                    f"migration {mig.version:03d}_{mig.name} could not take its table locks in {LOCK_ATTEMPTS} "
                    f"tries of {LOCK_TIMEOUT_S:g} s; sessions in long transactions: {blockers}. End them "
                    "(pg_terminate_backend(pid)) or wait for them, then migrate again") from None
            log.warning("migration %03d_%s waits for table locks (try %d of %d); long transactions: %s",
                        mig.version, mig.name, attempt, LOCK_ATTEMPTS, blockers)
            time.sleep(RETRY_PAUSE_S)


def _connect(dsn: str, connect_timeout_s: float) -> psycopg.Connection:
    # connect_timeout: a database host that accepts and never answers held `migrate` (and `serve`'s start) for ever.
    return psycopg.connect(dsn, autocommit=True, connect_timeout=libpq_timeout(connect_timeout_s))


def migrate(dsn: str, up_to: int | None = None, connect_timeout_s: float = 5.0) -> list[Migration]:
    """Apply every pending migration (up to version UP_TO when given); returns those applied now."""
    done: list[Migration] = []
    with _connect(dsn, connect_timeout_s) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            have = applied(conn)
            migrations = available()
            _check_unchanged(have, migrations)
            for mig in migrations:
                if mig.version in have or (up_to is not None and mig.version > up_to):
                    continue
                log.info("applying migration %03d_%s", mig.version, mig.name)
                _apply(conn, mig)
                done.append(mig)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done


# Each table's id sequence, with the column it numbers (every one has an index: max() is a lookup).
_OWNED_SEQUENCES = """
SELECT s.oid::regclass::text, t.oid::regclass::text, quote_ident(a.attname)
FROM pg_class s
JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                 AND d.deptype IN ('a', 'i')
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE s.relkind = 'S' AND t.relkind IN ('r', 'p') ORDER BY 1"""


@dataclass(frozen=True)
class SequenceMove:
    sequence: str
    table: str
    was: int  # the last id it gave
    now: int  # the last id it gives from now on (the next is one more)


def align_sequences(conn: psycopg.Connection, ahead: dict[str, int] | None = None) -> list[SequenceMove]:
    """Move each table's id sequence past the largest id the table holds, plus AHEAD[table] ids; returns the
    moves. A dump restored into a database that still had its tables rewinds every sequence (the dump's setval
    runs, its rows do not load): new rows then took ids in use, and the database refused a manager's change and
    the boxes' re-sent sightings for good, with nothing saying why. A sequence already past is left alone."""
    moves: list[SequenceMove] = []
    for sequence, table, column in conn.execute(_OWNED_SEQUENCES).fetchall():
        top = one_row(conn.execute(f"SELECT max({column}) FROM {table}"))[0] or 0
        last, called = one_row(conn.execute(f"SELECT last_value, is_called FROM {sequence}"))
        was = last if called else last - 1
        want = top + (ahead or {}).get(table, 0)
        if want > was:
            conn.execute("SELECT setval(%s, %s)", (sequence, want))
            moves.append(SequenceMove(sequence, table, was, want))
    return moves


@dataclass(frozen=True)
class IdCheck:
    restored: bool  # a restored database, whose defect and token ids were moved past the lost ones now
    moves: list[SequenceMove]


# After a restore, ids continue this far past the largest the dump holds: the defects and tokens made after the
# dump (lost with it) had ids that work orders and notes still name, and a new one must not answer to them.
RESTORED_AHEAD = {"defects": 100_000, "api_tokens": 100_000}


def settle_ids(dsn: str, after_restore: bool = False, connect_timeout_s: float = 5.0) -> IdCheck:
    """After the migrations: every sequence past its table's ids, and for a restored database (recognised, or
    AFTER_RESTORE for a dump older than migration 027) defect and token ids RESTORED_AHEAD on, once."""
    with _connect(dsn, connect_timeout_s) as conn:
        origin = database_origin(conn)
        restored = origin == "restored" or (after_restore and origin == "unknown")
        moves = align_sequences(conn, RESTORED_AHEAD if restored else None)
        mark_origin(conn)
    return IdCheck(restored, moves)


def database_origin(conn: psycopg.Connection) -> str:
    """`restored` when the tables are not the ones the database was last migrated with (a pg_dump restored since),
    `unknown` when that is not recorded yet (before migration 027, or a dump of such a database), else `same`."""
    try:
        row = conn.execute("SELECT defects_table = 'defects'::regclass::oid FROM database_origin").fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return "unknown"
    if row is None or row[0] is None:
        return "unknown"
    return "same" if row[0] else "restored"


def mark_origin(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE database_origin SET defects_table = 'defects'::regclass::oid, marked_at = now()")
