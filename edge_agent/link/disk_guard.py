"""Keeps the outbox inside its disk budget and above the filesystem's free-space floor, and no confirmed row past
its retention.

Confirmed rows older than `retention_days` are deleted whatever the space (the queue is where the vehicle went:
it was kept for years on a box with room). When either limit is reached, space is freed in a fixed order, cheapest
loss first:

1. thumbnails of confirmed events (the server already has them);
2. confirmed rows older than the retention;
3. thumbnails of pending low-severity events (the event itself still goes out);
4. confirmed rows of any age (already on the server; only local history is lost).

An unconfirmed row (pending or sent) is never deleted. When all of that is not enough, the outbox refuses new
low-severity events and counts them (see Outbox.add_event).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.config.outbox import OutboxConfig
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Free down to this share of the limit, so that one freeing pass buys room for many writes.
LOW_WATER = 0.9


@dataclass(frozen=True)
class DiskUse:
    used_mb: float       # live pages of the database (the WAL, capped at 4 MB by the outbox, is not counted)
    free_mb: float       # free space on the filesystem that holds it
    over_budget: bool
    under_floor: bool

    @property
    def tight(self) -> bool:
        return self.over_budget or self.under_floor


# What a refused write in the outbox's folder means, by errno: (what is wrong, what to do). SQLite only says
# "unable to open database file" or "disk I/O error"; the errno of a plain write tells the cases apart.
_FULL = ("is on a full disk",
         "free disk space (old logs: `journalctl --vacuum-size=100M`; confirmed rows: `edge-agent queue purge "
         "--confirmed`) or use a bigger card")
_READ_ONLY = ("is on a read-only filesystem",
              "remount it read-write (`mount -o remount,rw ...`); a card that turned read-only by itself is "
              "failing (`dmesg`): copy the outbox off and replace the card")
_NO_PERMISSION = ("is not writable by this user",
                  "run as the agent's user (`sudo -u edge-agent ...`); check the folder's owner (`ls -ld`)")
WRITE_TROUBLE = {errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EROFS: _READ_ONLY,
                 errno.EACCES: _NO_PERMISSION, errno.EPERM: _NO_PERMISSION}
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def write_probe(folder: Path) -> OSError | None:
    """The error that writing (and syncing) a small file in FOLDER gives; None when the folder takes writes."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
    except OSError as exc:
        return exc
    try:
        os.write(fd, b"x")  # unbuffered: a full disk answers here, not later in a close
        os.fsync(fd)
    except OSError as exc:
        return exc
    finally:
        os.close(fd)
        os.unlink(name)
    return None


def write_trouble(exc: OSError) -> tuple[str, str]:
    """(what is wrong with the folder, what to do) for a write that failed with EXC."""
    return WRITE_TROUBLE.get(exc.errno or 0, (f"cannot be written ({exc.strerror or exc})",
                                              "check the disk (`dmesg`, `df -h`) and the folder's owner"))


class DiskGuard:
    """Measures the outbox's disk use and frees space in policy order. The caller holds the outbox's lock."""

    def __init__(self, conn: sqlite3.Connection, path: Path, cfg: OutboxConfig) -> None:
        self.conn = conn
        self.path = path
        self.cfg = cfg

    def measure(self, slack: float = 1.0) -> DiskUse:
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free_pages = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        used_mb = (pages - free_pages) * page_size / MB
        free_mb = shutil.disk_usage(self.path.parent).free / MB
        return DiskUse(
            used_mb=round(used_mb, 3),
            free_mb=round(free_mb, 1),
            over_budget=used_mb >= self.cfg.budget_mb * slack,
            under_floor=free_mb < self.cfg.free_floor_mb / slack if slack else False,
        )

    def make_room(self) -> list[str]:
        """Run the freeing steps in order until use is back under the low-water mark; returns what was done."""
        done: list[str] = []
        for name, sql, args in self._steps():
            if not self.measure(LOW_WATER).tight:
                break
            n = self.conn.execute(sql, args).rowcount
            self.conn.commit()
            if n:
                self.conn.execute("PRAGMA incremental_vacuum")  # hand freed pages back to the filesystem
                self.conn.commit()
                done.append(f"{name}: {n}")
                log.warning("outbox over its disk limits: %s (%d rows)", name, n)
        return done

    def expire(self, clock_set_after: str) -> int:
        """Delete the confirmed rows past the retention; how many. A row confirmed while the box's clock was not
        set (stamped before CLOCK_SET_AFTER) has no age: it goes when space is needed."""
        cutoff = self._retention_cutoff()
        n = sum(self.conn.execute(f"DELETE FROM {table} WHERE state = 'confirmed' AND confirmed_at < ? "
                                  "AND confirmed_at >= ?", (cutoff, clock_set_after)).rowcount
                for table in ("events", "coverage"))
        self.conn.commit()
        if n:
            self.conn.execute("PRAGMA incremental_vacuum")
            self.conn.commit()
            log.info("outbox: deleted %d confirmed rows older than %g days", n, self.cfg.retention_days)
        return n

    def _retention_cutoff(self) -> str:
        return utc_iso(datetime.now(UTC) - timedelta(days=self.cfg.retention_days))

    def _steps(self) -> list[tuple[str, str, tuple]]:
        cutoff = self._retention_cutoff()
        return [
            ("dropped thumbnails of confirmed events",
             "UPDATE events SET media = NULL WHERE state = 'confirmed' AND media IS NOT NULL", ()),
            ("dropped confirmed events past retention",
             "DELETE FROM events WHERE state = 'confirmed' AND confirmed_at < ?", (cutoff,)),
            ("dropped confirmed coverage past retention",
             "DELETE FROM coverage WHERE state = 'confirmed' AND confirmed_at < ?", (cutoff,)),
            ("dropped thumbnails of pending low-severity events",
             "UPDATE events SET media = NULL WHERE state != 'confirmed' AND media IS NOT NULL AND severity < ?",
             (self.cfg.low_severity,)),
            ("dropped confirmed events within retention",
             "DELETE FROM events WHERE state = 'confirmed'", ()),
            ("dropped confirmed coverage within retention",
             "DELETE FROM coverage WHERE state = 'confirmed'", ()),
        ]
