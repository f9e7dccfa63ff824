"""The offline queue: submissions on disk (SQLite, WAL) until the server has them."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

MEMORY = ":memory:"  # a queue that dies with the process: only when a caller asks for it
DATA_DIR_ENV = "ROADMON_CLIENT_DATA_DIR"
APP_DIR = "road-monitor"


def user_data_dir() -> Path:
    """Where this user's applications keep their data: $ROADMON_CLIENT_DATA_DIR, else the platform's place
    (the same places as platformdirs' user_data_dir, without the dependency)."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / APP_DIR
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / APP_DIR
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / APP_DIR


def default_queue_path(base_url: str) -> Path:
    """The queue file of one server: one file per base URL, so that bodies queued for a test server are
    never sent to the production one by a later client of the same user."""
    digest = hashlib.sha256(base_url.rstrip("/").encode()).hexdigest()[:16]
    return user_data_dir() / f"queue-{digest}.db"


class OfflineQueue:
    """Pending bodies in arrival order; bodies the server refused for good are kept apart with the reason,
    and a "not before" time (the server's Retry-After) that holds every send until then."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Queued bodies are positions and photos: this user's only (0644 under the usual umask before).
            # SQLite gives its -wal and -shm files the mode of the database.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != MEMORY:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a queued body survives a power cut
        self._db.execute("CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, body TEXT NOT NULL, "
                         "queued_at TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS refused (id INTEGER PRIMARY KEY, body TEXT NOT NULL, "
                         "status INTEGER NOT NULL, reason TEXT NOT NULL, refused_at TEXT NOT NULL)")
        # A table of its own (not a column) so that queue files of earlier versions need no migration.
        self._db.execute("CREATE TABLE IF NOT EXISTS hold (id INTEGER PRIMARY KEY CHECK (id = 1), "
                         "not_before REAL NOT NULL)")
        log.debug("offline queue at %s", self.path)

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
        """Move a body the server refused for good (400, 413, 422 with its error body) aside, with the reason."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO refused (body, status, reason, refused_at) SELECT body, ?, ?, ? "
                             "FROM pending WHERE id = ?", (status, reason[:2000], _now(), row_id))
            self._db.execute("DELETE FROM pending WHERE id = ?", (row_id,))
            self._db.execute("COMMIT")

    def refused(self) -> list[tuple[str, int, str]]:
        with self._lock:
            return self._db.execute("SELECT body, status, reason FROM refused ORDER BY id").fetchall()

    def requeue_refused(self) -> int:
        """Put every refused body back in the queue, behind what waits there (after a server fix, or a
        refusal that turned out to be wrong); returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            moved = self._db.execute("INSERT INTO pending (body, queued_at) SELECT body, ? FROM refused "
                                     "ORDER BY id", (_now(),)).rowcount
            self._db.execute("DELETE FROM refused")
            self._db.execute("COMMIT")
        return moved

    def hold_until(self, when: datetime) -> None:
        """Send nothing before WHEN (the server asked to wait); kept on disk, so a restarted app waits too."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO hold (id, not_before) VALUES (1, ?)", (when.timestamp(),))

    def not_before(self) -> datetime | None:
        """The time before which nothing is sent, while it is ahead; else None."""
        with self._lock:
            row = self._db.execute("SELECT not_before FROM hold WHERE id = 1").fetchone()
        if row is None or row[0] <= time.time():
            return None
        return datetime.fromtimestamp(row[0], timezone.utc)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM pending").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
