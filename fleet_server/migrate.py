"""Schema migrations: numbered SQL files in fleet_server/migrations, applied once each, in order.

`schema_version` records what ran. Each file runs in its own transaction under an advisory lock, so two
servers starting at once do not apply the same file twice.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x526D4D67  # any constant shared by every server of this schema


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    out = []
    for entry in resources.files("fleet_server.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            out.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(out, key=lambda m: m.version)


def applied(conn: psycopg.Connection) -> set[int]:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, name text NOT NULL, "
                 "applied_at timestamptz NOT NULL DEFAULT now())")
    return {row[0] for row in conn.execute("SELECT version FROM schema_version")}


def migrate(dsn: str, up_to: int | None = None) -> list[Migration]:
    """Apply every pending migration (up to version UP_TO when given); returns those applied now."""
    done: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            have = applied(conn)
            for mig in available():
                if mig.version in have or (up_to is not None and mig.version > up_to):
                    continue
                log.info("applying migration %03d_%s", mig.version, mig.name)
                with conn.transaction():
                    conn.execute(mig.sql)
                    conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                                 (mig.version, mig.name))
                done.append(mig)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done


def current_version(conn: psycopg.Connection) -> int | None:
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] if row else None
