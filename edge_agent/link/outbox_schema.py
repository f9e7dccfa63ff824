"""The outbox's tables and their migrations: `migrate` brings any older queue file to SCHEMA_VERSION in place.

The version is SQLite's PRAGMA user_version: the number of migrations applied to the file.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)


def _v1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            seq INTEGER,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'confirmed')),
            priority INTEGER NOT NULL,
            severity REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            sent_at TEXT,
            confirmed_at TEXT,
            due_at REAL NOT NULL DEFAULT 0,
            payload TEXT NOT NULL,
            media TEXT)"""
    )
    db.execute(
        """CREATE TABLE coverage (
            id INTEGER PRIMARY KEY,
            coverage_id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'confirmed')),
            priority INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            sent_at TEXT,
            confirmed_at TEXT,
            due_at REAL NOT NULL DEFAULT 0,
            payload TEXT NOT NULL)"""
    )
    for table in ("events", "coverage"):
        # The drain walks this partial index: only unconfirmed rows, already in send order; due_at in the index
        # lets it skip the rows in flight without reading them.
        # No index on state: every state change would move an entry in it, which costs more than the drain
        # itself; stats() counts through the queue index instead.
        db.execute(f"CREATE INDEX {table}_queue ON {table} (priority DESC, id, due_at) WHERE state != 'confirmed'")


def _v2(db: sqlite3.Connection) -> None:
    # The server's ack may reject a message for good (it keeps it as a dead letter): the row is done, and
    # carries the reason instead of being sent again forever.
    for table in ("events", "coverage"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN rejected TEXT")


def _v3(db: sqlite3.Connection) -> None:
    # stats() counts the rows the server refused on every heartbeat, and doctor asks for the recent ones: a
    # partial index holds only those rows (nothing is added to it while rows are sent or confirmed).
    for table in ("events", "coverage"):
        db.execute(f"CREATE INDEX {table}_rejected ON {table} (confirmed_at) WHERE rejected IS NOT NULL")


# Append only: the outbox's schema version is the number of migrations applied (PRAGMA user_version).
MIGRATIONS = [_v1, _v2, _v3]
SCHEMA_VERSION = len(MIGRATIONS)
# The oldest schema a reader (status, queue, doctor) can answer from: version 3 only added an index, so a
# technician sees an upgraded box's old queue before its agent first starts (and upgrades it).
READABLE_FROM = 2


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations this file has not seen yet, each in its own transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"outbox schema version {version} is newer than this agent knows ({SCHEMA_VERSION})")
    for number in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[number](db)
            db.execute(f"PRAGMA user_version = {number + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        log.info("outbox schema migrated to version %d", number + 1)
    return SCHEMA_VERSION
