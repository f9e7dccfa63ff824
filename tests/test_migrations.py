"""Schema migrations on the real PostGIS: a database that applied an earlier text of a migration is brought to
the current schema, an edited migration is refused, and a migration waits for its locks a bounded time."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from fleet_server import migrate as migrations
from fleet_server.migrate import MigrationError, available, migrate

pytestmark = pytest.mark.services

XID_COLUMNS = """
SELECT count(*) FROM information_schema.columns
WHERE (table_name, column_name) IN (('defects', 'change_xid'), ('defect_merges', 'merged_xid'),
                                    ('coverage', 'stored_xid'))
"""


def _apply_as(dsn: str, version: int, sql: str) -> None:
    """What an earlier `migrate` did with an earlier text of migration VERSION (no sha256 kept then)."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(sql)
        conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, 'earlier text')", (version,))


def _schema(dsn: str) -> tuple[int, set[str]]:
    with psycopg.connect(dsn) as conn:
        triggers = {r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'defects'::regclass "
                                                "AND NOT tgisinternal")}
        return conn.execute(XID_COLUMNS).fetchone()[0], triggers


def test_a_server_that_applied_the_first_022_gets_the_change_ids(fresh_db: str) -> None:
    # 022 was once edited in place: servers that had applied its first text (time stamps) never got the
    # transaction-id columns and answered every since_token with 500 (an operator's upgrade test).
    migrate(fresh_db, up_to=21)
    first_022 = next(m for m in available() if m.version == 22)
    _apply_as(fresh_db, 22, first_022.sql)
    assert _schema(fresh_db)[0] == 0
    assert [m.version for m in migrate(fresh_db)][:1] == [23]
    columns, triggers = _schema(fresh_db)
    assert columns == 3 and "defects_mark_change" in triggers and "defects_stamp_change" not in triggers
    with psycopg.connect(fresh_db) as conn:
        conn.execute("UPDATE defects SET severity = severity")  # the trigger runs (no rows: no error either)


def test_a_server_that_applied_the_edited_022_takes_023_as_it_is(fresh_db: str) -> None:
    migrate(fresh_db, up_to=21)
    edited_022 = next(m for m in available() if m.version == 23)  # the edited 022 said what 023 says
    _apply_as(fresh_db, 22, edited_022.sql.split("DROP TRIGGER IF EXISTS defects_stamp_change")[0] +
              edited_022.sql.split("ALTER TABLE coverage DROP COLUMN IF EXISTS stored_at;")[1])
    assert _schema(fresh_db)[0] == 3
    assert 23 in [m.version for m in migrate(fresh_db)]
    columns, triggers = _schema(fresh_db)
    assert columns == 3 and "defects_mark_change" in triggers and "defects_stamp_change" not in triggers


def test_an_applied_migration_that_was_edited_is_refused_by_name(fresh_db: str) -> None:
    migrate(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET sha256 = 'not the text applied' WHERE version = 2")
    with pytest.raises(MigrationError, match=r"migration 002_\w+\.sql differs from the text this database applied"):
        migrate(fresh_db)


def test_a_migration_waits_for_its_locks_a_bounded_time_and_names_the_session(fresh_db: str, monkeypatch) -> None:
    # Without lock_timeout the ALTER TABLE waited behind a report left open in a transaction, and every API read
    # queued behind the ALTER: 20-22 s per request for as long as the report lasted.
    monkeypatch.setattr(migrations, "LOCK_TIMEOUT_S", 0.3)
    monkeypatch.setattr(migrations, "LOCK_ATTEMPTS", 3)
    monkeypatch.setattr(migrations, "RETRY_PAUSE_S", 0.1)
    migrate(fresh_db, up_to=22)
    report = psycopg.connect(fresh_db, application_name="weekly report")
    report.execute("SELECT count(*) FROM defects")  # a transaction left open holds its lock on the table
    time.sleep(1.1)  # long enough to be named as a long transaction
    waits: list[float] = []

    def read_meanwhile() -> None:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            for _ in range(8):
                t0 = time.monotonic()
                conn.execute("SELECT count(*) FROM defects")
                waits.append(time.monotonic() - t0)
                time.sleep(0.1)

    reader = threading.Thread(target=read_meanwhile)
    reader.start()
    try:
        with pytest.raises(MigrationError, match=r"023_defect_changes_by_xid could not take its table locks.*"
                                                 r"weekly report"):
            migrate(fresh_db)
    finally:
        reader.join()
        report.rollback()
    assert max(waits) < 1.0, waits  # reads waited behind the ALTER at most one lock_timeout
    assert [m.version for m in migrate(fresh_db, up_to=23)] == [23]  # the report ended: it goes through
    report.close()


# Edited before migrate kept hashes: 015 six minutes after its first commit, in the same day's work.
EDITED_BEFORE_THE_RULE = {"015_fleet_scale.sql"}


def test_no_migration_differs_from_the_text_it_was_first_committed_with() -> None:
    """The developer's side of the sha256 check: a released migration gets a successor, not an edit."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout: the history to compare with is not here")
    edited = []
    for path in sorted((root / "fleet_server" / "migrations").glob("*.sql")):
        rel = path.relative_to(root).as_posix()
        first = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", rel], cwd=root,
                               capture_output=True, text=True).stdout.split()
        if not first:
            continue  # not committed yet
        text = subprocess.run(["git", "show", f"{first[-1]}:{rel}"], cwd=root, capture_output=True).stdout
        if text != path.read_bytes() and path.name not in EDITED_BEFORE_THE_RULE:
            edited.append(rel)
    assert edited == []
