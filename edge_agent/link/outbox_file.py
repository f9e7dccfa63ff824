"""The outbox's SQLite file as a file: opening it, telling a disk that refuses it (full, read-only, no
permission, failing) apart from damage to its contents, and checking a possibly damaged one and moving it aside.
Nothing here knows the queue's rows; outbox.py does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.link.disk_guard import write_probe, write_trouble

log = logging.getLogger(__name__)

# How a connection opens the file: read-write; SQLite's mode=ro (it cannot write, not even by mistake);
# immutable (read-only without locks: only right where nobody can change the file, a read-only mount).
URI_QUERY = {"rw": "", "ro": "?mode=ro", "immutable": "?mode=ro&immutable=1"}


def connect(path: Path, mode: str = "rw") -> sqlite3.Connection:
    """A connection to the outbox file PATH, opened as MODE (a key of URI_QUERY), in autocommit."""
    target: str | Path = path.absolute().as_uri() + URI_QUERY[mode] if mode != "rw" else path
    if mode == "rw" and not path.exists():
        # The queue is where the vehicle went and what its camera saw: not for every user of the box (it was
        # 0644 under the usual umask outside systemd). Its -wal and -shm files take this mode from it. A disk
        # that refuses (read-only, full) is left for SQLite to refuse, in the words the callers know.
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
    conn = sqlite3.connect(target, check_same_thread=False, timeout=10, isolation_level=None, uri=mode != "rw")
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


class OutboxUnavailable(RuntimeError):
    """The outbox cannot be opened the way this process needs it (a read-only or full disk, no permission):
    str() is one line saying why, `hint` what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def folder_refusal(path: Path, exc: OSError) -> OutboxUnavailable:
    """One line, and what to do, for EXC: the folder of the outbox PATH refusing a write."""
    what, hint = write_trouble(exc)
    return OutboxUnavailable(f"outbox folder {path.parent} {what}", hint)


def disk_refusal(path: Path, exc: sqlite3.Error, problem: OSError | None = None) -> OutboxUnavailable:
    """One line, and what to do, for EXC: SQLite failing on the outbox PATH because of the disk. SQLite's
    codes do not tell a read-only disk from a permission problem, so the folder's own write error (PROBLEM,
    probed when not given) names the cause."""
    if problem is None and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL:
        problem = OSError(errno.ENOSPC, "No space left on device")
    problem = problem or write_probe(path.parent)
    if problem is not None:
        return folder_refusal(path, problem)
    return OutboxUnavailable(f"cannot use the outbox {path}: {exc}", "check the disk (`dmesg`, `df -h`)")


# Result codes that say the disk or the system is in trouble (full, I/O error, locked, no memory), not that
# the file is damaged: such a queue is healthy and must never be moved aside.
_TROUBLE = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_BUSY,
            sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM}


def disk_trouble(exc: BaseException) -> bool:
    """Whether EXC is SQLite failing because of the disk or the system rather than the file's contents."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _TROUBLE


def quick_check(path: Path) -> str | None:
    """None when PATH is a sound SQLite file (or absent), else what is wrong with it. Disk trouble (full,
    I/O errors) is raised, not returned: it says nothing about the file."""
    if not path.exists():
        return None
    try:
        conn = connect(path)
        try:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # no -shm file needed: works on a full disk
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if disk_trouble(exc):
            raise
        return str(exc)
    verdict = "; ".join(str(r[0]) for r in rows)
    return None if verdict == "ok" else verdict


def move_aside(path: Path, why: str) -> Path:
    """Rename a corrupt outbox (and its WAL/SHM) to <name>.corrupt-<UTC stamp> and return the new name."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{target}{suffix}"))
    log.error("outbox %s is corrupt (%s); moved it aside to %s and started a new one", path, why, target)
    return target
