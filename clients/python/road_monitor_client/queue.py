"""The offline queue: submissions on disk (SQLite, WAL) until the server has them."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path


class OfflineQueue:
    """Pending bodies in arrival order; bodies the server refused for good are kept apart with the reason."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a queued body survives a power cut
        self._db.execute("CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, body TEXT NOT NULL, "
                         "queued_at TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS refused (id INTEGER PRIMARY KEY, body TEXT NOT NULL, "
                         "status INTEGER NOT NULL, reason TEXT NOT NULL, refused_at TEXT NOT NULL)")

    def put(self, body: str) -> int:
        with self._lock:
            return self._db.execute("INSERT INTO pending (body, queued_at) VALUES (?, ?)", (body, _now())).lastrowid

    def pending(self) -> list[tuple[int, str]]:
        with self._lock:
            return self._db.execute("SELECT id, body FROM pending ORDER BY id").fetchall()

    def done(self, row_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE id = ?", (row_id,))

    def failed_attempt(self, row_id: int, error: str) -> None:
        with self._lock:
            self._db.execute("UPDATE pending SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                             (error[:500], row_id))

    def refuse(self, row_id: int, status: int, reason: str) -> None:
        """Move a body the server will never take (400, 401, 403) aside, with the server's reason."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO refused (body, status, reason, refused_at) SELECT body, ?, ?, ? "
                             "FROM pending WHERE id = ?", (status, reason[:2000], _now(), row_id))
            self._db.execute("DELETE FROM pending WHERE id = ?", (row_id,))
            self._db.execute("COMMIT")

    def refused(self) -> list[tuple[str, int, str]]:
        with self._lock:
            return self._db.execute("SELECT body, status, reason FROM refused ORDER BY id").fetchall()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM pending").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
