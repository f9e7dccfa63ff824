"""The outbox: every event and coverage record, on the box's disk, until the fleet server confirms it.

SQLite in WAL mode, through the standard library (the queue is partial indexes, pragmas and a few statements:
a wrapper added nothing). A row moves pending -> sent (the broker's PUBACK) -> confirmed
(the server's ack on roadmon/v1/<id>/ack), or -> rejected when that ack refuses it for good. Rows are drained
by priority (severity first), then age.
Writes of new events use the configured synchronous mode (FULL by default: on disk when add_event returns);
state changes always use NORMAL, since losing one to a power cut only means sending that row again and the
server is idempotent on event_id.

One connection guarded by a lock serves the pipeline (writes) and the uplink (drain, marks); other processes
(the CLI) open their own connection, which WAL allows while the agent runs.

The tables and their migrations are in outbox_schema; opening the file, telling disk trouble from damage and
moving a damaged file aside in outbox_file. Salvaging a moved-aside queue's rows stays here: it copies them
into this queue, through its connection and transactions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent.config.outbox import OutboxConfig
from edge_agent.health import HealthBoard
from edge_agent.link.disk_guard import FULL_ERRNOS, DiskGuard, write_probe
from edge_agent.link.outbox_file import (
    OutboxUnavailable,
    connect,
    disk_refusal,
    disk_trouble,
    folder_refusal,
    move_aside,
    quick_check,
)
from edge_agent.link.outbox_schema import READABLE_FROM, SCHEMA_VERSION, migrate
from roadmon_contract.times import utc_iso, utc_now_iso

log = logging.getLogger(__name__)

# Large optional fields kept apart from the row's payload, so the disk guard can drop them and keep the event.
MEDIA_KEYS = ("thumbnail_jpeg_b64", "frame_jpeg_b64")
KINDS = ("event", "coverage")
# What readers see. In the file a row the server refused keeps state 'confirmed' (done: never sent again, and
# out of the drain's partial index) with the reason in `rejected`; every reader reports it as 'rejected', so
# 'confirmed' always means "stored by the server".
STATES = ("pending", "sent", "confirmed", "rejected")
# The state a reader reports for a row (SQL over a table's columns).
SHOWN_STATE = "CASE WHEN rejected IS NOT NULL THEN 'rejected' ELSE state END"
# Where a reader's --state selects its rows.
STATE_FILTER = {"pending": "state = 'pending'", "sent": "state = 'sent'",
                "confirmed": "state = 'confirmed' AND rejected IS NULL", "rejected": "rejected IS NOT NULL"}
TABLE = {"event": "events", "coverage": "coverage"}
ID_COLUMN = {"event": "event_id", "coverage": "coverage_id"}


# A stamp before this was made by a clock nobody had set (a Raspberry Pi boots in 1970 or at its image's build
# date until NTP or GNSS sets it): its age says nothing ("499037 h ago").
CLOCK_SET_AFTER = "2024-01-01T00:00:00.000Z"
# How often a running agent deletes the confirmed rows past outbox.retention_days (also at each start), s.
EXPIRE_EVERY_S = 600.0
SALVAGE_CHUNK = 64  # rows read at a time from a damaged queue: a bad page costs about its own rows


def priority_of(severity: float) -> int:
    """Severity 0..1 as an integer priority 1..101; coverage has priority 0, so every event goes first."""
    return 1 + round(max(0.0, min(1.0, severity)) * 100)


@dataclass(frozen=True)
class Message:
    """One row due for sending: `kind` is 'event' or 'coverage', `body` the JSON bytes to publish."""

    kind: str
    id: str
    body: bytes
    attempts: int


class Outbox:
    """The store-and-forward queue. Thread-safe; see the module docstring for the row life cycle."""

    def __init__(self, path: Path | str, cfg: OutboxConfig | None = None, health: HealthBoard | None = None,
                 *, agent: bool = True, read_only: bool = False) -> None:
        """AGENT: this process drains the queue, so check the file's integrity (moving a corrupt one aside) and
        make rows an earlier process had in flight due again. Tools that look at a running agent's queue (the
        CLI) pass False and change nothing behind its back; READ_ONLY (implies not AGENT) opens the file with
        SQLite's mode=ro, for tools that only read: they work on a read-only disk too. Raises
        OutboxUnavailable when the disk refuses what this process needs."""
        self.path = Path(path)
        if self.path.is_dir():  # SQLite would say "unable to open database file", which reads as a disk fault
            raise OutboxUnavailable(f"outbox {self.path} is a folder, not a file",
                                    "name a file in it, e.g. outbox.file = \"<folder>/outbox.db\" (or --outbox)")
        self.cfg = cfg or OutboxConfig()
        self.health = health
        self.changed = threading.Event()   # set on every new row; the uplink waits on it when idle
        self._lock = threading.RLock()
        self.read_only = read_only
        self._mode = "ro" if read_only else "rw"
        self._agent = agent = agent and not read_only
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise folder_refusal(self.path, exc) from None
        self.moved_aside: Path | None = None
        # Rows handed out or confirmed while the disk refused to record it: kept in memory, so a full disk
        # never stops the uplink (which is what frees space) and is written once the disk has room again.
        self._held: dict[tuple[str, str], float] = {}
        self._unsaved_confirmed: set[tuple[str, str]] = set()
        self._stored_due_stale = False
        self.exclusive = False
        if agent:
            self._check_integrity()
        try:
            self._open()
        except sqlite3.OperationalError as exc:
            if not disk_trouble(exc):
                raise
            self._open_despite(exc)
        if agent:
            self._requeue_in_flight()
            self._import_moved_aside()
            self._expire()
        self._set_sync(self.cfg.synchronous)
        self._set_health("full" if self.exclusive else "ok")

    def _open_despite(self, exc: sqlite3.OperationalError) -> None:
        """The disk refused the usual open. A full disk cannot hold the -shm file WAL readers need (not even a
        mode=ro reader can do without it): in exclusive mode SQLite keeps that index in memory, so the queue can
        still be read and drained (other processes wait meanwhile); a reader then opens the file read-write
        but writes nothing. A read-only mount cannot change under a reader, so it reads without locks. Anything
        else (a read-only disk for a writer, no permission) is refused with one line saying why."""
        problem = self._probe_disk()
        if self.read_only and problem is not None and problem.errno == errno.EROFS:
            self._mode = "immutable"
        else:
            # Only the agent's own queue in this state is news; a tool just goes on.
            log.log(logging.ERROR if self._agent else logging.DEBUG,
                    "outbox %s: %s; opened it in exclusive mode until the disk has room", self.path, exc)
            self._mode = "rw"
            self.exclusive = True
        try:
            self._open()
        except sqlite3.OperationalError as again:
            if not disk_trouble(again):
                raise
            raise disk_refusal(self.path, again, problem) from None

    def _probe_disk(self) -> OSError | None:
        """Why the folder refuses writes (None: it does not). A writer is refused at once, in one line, unless
        the disk is only full: that one the outbox works around."""
        problem = write_probe(self.path.parent)
        if problem is not None and problem.errno not in FULL_ERRNOS and not self.read_only:
            raise folder_refusal(self.path, problem) from None
        return problem

    def _check_integrity(self) -> None:
        try:
            problem = quick_check(self.path)
        except sqlite3.DatabaseError as exc:
            self._probe_disk()
            log.error("outbox %s could not be checked (%s); keeping it: a full or failing disk is not corruption",
                      self.path, exc)
            return
        if problem:
            self.moved_aside = move_aside(self.path, problem)
            self._count("outbox_corrupt_moved_aside")

    def _open(self) -> None:
        conn = connect(self.path, self._mode)
        try:
            self._set_up(conn)
        except BaseException:
            conn.close()  # a half-opened connection is not left behind (the caller may try another way)
            raise

    def _set_up(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        if self.exclusive:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        if self.read_only:
            self._check_readable_version()
        else:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                # Must precede the first table: lets the disk guard hand freed pages back to the filesystem.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            # A larger WAL means fewer checkpoints (each one copies pages back and fsyncs) while draining.
            conn.execute("PRAGMA wal_autocheckpoint = 4000")
            conn.execute("PRAGMA journal_size_limit = 16777216")
        conn.execute("PRAGMA cache_size = -16000")  # 16 MB: the drain's index walks stay in memory
        self._set_sync(self.cfg.synchronous)
        if not self.read_only:
            migrate(conn)
        self.guard = DiskGuard(conn, self.path, self.cfg)
        self._writes = 0
        self._expired_at = time.monotonic()
        self._tight = False
        self.dropped: dict[str, int] = self._load_counters()
        self._unsaved_drops: set[str] = set()
        self._seq = self._load_seq()

    def _check_readable_version(self) -> None:
        # A reader cannot migrate: the queries here need a schema from READABLE_FROM on, which the agent's next
        # start brings any older queue to.
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if not READABLE_FROM <= version <= SCHEMA_VERSION:
            raise OutboxUnavailable(
                f"outbox {self.path} has schema version {version}; this agent reads version {SCHEMA_VERSION}",
                "start the agent once (it upgrades the queue in place)" if version < SCHEMA_VERSION
                else "update this agent: a newer one wrote the queue")

    # ------------------------------------------------------------------------------------------ writes
    def next_seq(self) -> int:
        """The next per-device sequence number. It is stored with the event that uses it, so a number taken
        by an event that never reached the outbox is reused after a restart rather than leaving a gap."""
        with self._lock:
            self._seq += 1
            return self._seq

    def add_event(self, event: dict[str, Any]) -> bool:
        """Store EVENT durably. False when the disk guard refused it (counted); ValueError for bad input.
        Adding an event_id that is already stored is a no-op that returns True."""
        event_id, severity, payload, media = _split_event(event)
        low = severity < self.cfg.low_severity
        with self._lock:
            if not self._room_for(low, "events_refused_low_severity"):
                return False
            seq = event.get("seq")
            try:
                with self._transaction(self.cfg.synchronous):
                    self.conn.execute(
                        "INSERT OR IGNORE INTO events (event_id, seq, priority, severity, created_at, payload, media)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (event_id, seq, priority_of(severity), severity, utc_now_iso(), payload, media),
                    )
                    if isinstance(seq, int):
                        self.conn.execute(
                            "INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT (key) DO UPDATE"
                            " SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                            (str(seq),),
                        )
                        self._seq = max(self._seq, seq)
                    self._save_drops()
            except sqlite3.OperationalError as exc:
                return self._write_failed(exc, "events_refused_disk_full")
            self._unsaved_drops.clear()
        self.changed.set()
        return True

    def add_coverage(self, record: dict[str, Any]) -> bool:
        """Store a coverage record (a driven stretch). Coverage gives way like a low-severity event."""
        if not isinstance(record, dict) or not isinstance(record.get("coverage_id"), str):
            raise ValueError("coverage record must be a JSON object with a string 'coverage_id'")
        payload = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            if not self._room_for(True, "coverage_refused"):
                return False
            try:
                with self._transaction(self.cfg.synchronous):
                    self.conn.execute(
                        "INSERT OR IGNORE INTO coverage (coverage_id, created_at, payload) VALUES (?, ?, ?)",
                        (record["coverage_id"], utc_now_iso(), payload),
                    )
                    self._save_drops()
            except sqlite3.OperationalError as exc:
                return self._write_failed(exc, "coverage_refused_disk_full")
            self._unsaved_drops.clear()
        self.changed.set()
        return True

    # ------------------------------------------------------------------------------------------- drain
    def due(self, limit: int, resend_after_s: float, exclude: Iterable[tuple[str, str]] = ()) -> list[Message]:
        """Up to LIMIT unconfirmed rows that are due (never sent, or sent longer than RESEND_AFTER_S ago),
        events by priority then age, then coverage. Each returned row counts one attempt and is not due again
        for RESEND_AFTER_S."""
        now = time.monotonic()
        with self._lock:
            self._held = {k: until for k, until in self._held.items() if until > now}
            skip = set(exclude) | set(self._held) | self._unsaved_confirmed
            picked: dict[str, list[tuple]] = {}
            for kind in KINDS:
                want = limit - sum(len(p) for p in picked.values())
                if want <= 0:
                    break
                table, media = TABLE[kind], ("media" if kind == "event" else "NULL")
                rows = self.conn.execute(
                    f"SELECT id, {ID_COLUMN[kind]}, payload, {media}, attempts FROM {table}"
                    f" WHERE state != 'confirmed' AND (due_at <= ? OR ?) ORDER BY priority DESC, id LIMIT ?",
                    (now, self._stored_due_stale, want + len(skip)),
                ).fetchall()
                picked[kind] = [r for r in rows if (kind, r[1]) not in skip][:want]
            try:
                with self._transaction("NORMAL"):
                    for kind, rows in picked.items():
                        self.conn.executemany(
                            f"UPDATE {TABLE[kind]} SET attempts = attempts + 1, due_at = ? WHERE id = ?",
                            [(now + resend_after_s, r[0]) for r in rows])
            except sqlite3.OperationalError as exc:
                if not disk_trouble(exc):
                    raise
                # Sending frees space (confirmed rows can go): hand the rows out anyway, remembered here.
                log.warning("outbox: could not record %d rows as sent (%s); tracking them in memory",
                            sum(len(r) for r in picked.values()), exc)
                self._held.update({(kind, r[1]): now + resend_after_s for kind, rows in picked.items() for r in rows})
        return [Message(kind, r[1], _body(r[2], r[3]), r[4] + 1) for kind, rows in picked.items() for r in rows]

    def mark_sent(self, items: Iterable[tuple[str, str]]) -> int:
        """The broker acknowledged these (kind, id) rows; returns how many moved pending -> sent."""
        return self._mark(items, "sent", "state = 'pending'")

    def mark_confirmed(self, items: Iterable[tuple[str, str]]) -> int:
        """The server committed these (kind, id) rows; returns how many became confirmed (each only once)."""
        return self._mark(items, "confirmed", "state != 'confirmed'")

    def mark_rejected(self, items: Iterable[tuple[str, str]]) -> int:
        """The server refused these (id, reason) for good and keeps them as dead letters: the rows are done
        (state 'rejected' to readers; see STATES) and counted as `rejected_by_server`. Returns how many."""
        now = utc_now_iso()
        n = 0
        with self._lock:
            with self._transaction("NORMAL"):
                for item_id, reason in items:
                    for kind, table in TABLE.items():
                        n += self.conn.execute(
                            f"UPDATE {table} SET state = 'confirmed', confirmed_at = ?, rejected = ?"
                            f" WHERE {ID_COLUMN[kind]} = ? AND state != 'confirmed'",
                            (now, str(reason)[:500], item_id)).rowcount
            for _ in range(n):
                self._drop("rejected_by_server")
        return n

    def retry(self) -> int:
        """Make every unconfirmed row due now (e.g. after fixing the broker); returns how many."""
        with self._lock, self._transaction("NORMAL"):
            n = sum(self.conn.execute(f"UPDATE {t} SET due_at = 0 WHERE state != 'confirmed'").rowcount
                    for t in TABLE.values())
        self.changed.set()
        return n

    def resend(self, confirmed_since: datetime | None = None, rejected: bool = False) -> dict[str, int]:
        """Send again the rows the server confirmed at or after CONFIRMED_SINCE (by this box's clock; rows
        confirmed while the clock was unset too), and with REJECTED those it refused: after the server's database
        was restored from a backup older than them, or a fault of the server's own refused them. The server
        stores each event once (by its id), so a row it still has is only confirmed again. Rows confirmed
        longer ago than outbox.retention_days may be gone already. Returns how many of each kind."""
        where = []
        params: list[str] = []
        if confirmed_since is not None:
            where.append(f"({STATE_FILTER['confirmed']} AND (confirmed_at >= ? OR confirmed_at < ?))")
            params += [utc_iso(confirmed_since), CLOCK_SET_AFTER]
        if rejected:
            where.append(STATE_FILTER["rejected"])
        if not where:
            return dict.fromkeys(KINDS, 0)
        with self._lock, self._transaction("NORMAL"):
            counts = {kind: self.conn.execute(
                f"UPDATE {TABLE[kind]} SET state = 'pending', sent_at = NULL, confirmed_at = NULL, rejected = NULL, "
                f"due_at = 0 WHERE {' OR '.join(where)}", params).rowcount for kind in KINDS}
        self.changed.set()
        if any(counts.values()):
            log.warning("sending again %d events and %d coverage records the server had confirmed%s",
                        counts["event"], counts["coverage"], " or refused" if rejected else "")
        return counts

    def purge_confirmed(self) -> int:
        """Delete every confirmed row (they are on the server); returns how many. Rows the server refused
        stay: they are the only evidence of what it refused (purge_rejected deletes them)."""
        return self._purge(STATE_FILTER["confirmed"])

    def purge_rejected(self) -> int:
        """Delete every row the server refused for good, with its reason; returns how many."""
        return self._purge(STATE_FILTER["rejected"])

    def _purge(self, where: str) -> int:
        with self._lock:
            with self._transaction("NORMAL"):
                n = sum(self.conn.execute(f"DELETE FROM {t} WHERE {where}").rowcount for t in TABLE.values())
            self.conn.execute("PRAGMA incremental_vacuum")
        return n

    # ------------------------------------------------------------------------------------------- reads
    def stats(self) -> dict[str, Any]:
        """Queue depth by state, oldest pending, last confirmed, disk use and drop counters."""
        with self._lock:
            counts = {}
            oldest = []
            for kind, table in TABLE.items():
                by_state = dict(self.conn.execute(
                    f"SELECT state, COUNT(*) FROM {table} WHERE state != 'confirmed' GROUP BY state").fetchall())
                by_state["rejected"] = self.conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE rejected IS NOT NULL").fetchone()[0]
                total = self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                by_state["confirmed"] = total - sum(by_state.values())
                counts[kind] = {s: by_state.get(s, 0) for s in STATES}
                oldest.append(self.conn.execute(
                    f"SELECT created_at FROM {table} WHERE id = "
                    f"(SELECT MIN(id) FROM {table} INDEXED BY {table}_queue WHERE state != 'confirmed')").fetchone())
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            use = self.guard.measure()
            dropped = dict(self.dropped)
        unconfirmed = sum(c["pending"] + c["sent"] for c in counts.values())
        return {
            "queue_depth": unconfirmed,
            "rejected": sum(c["rejected"] for c in counts.values()),
            "events": counts["event"],
            "coverage": counts["coverage"],
            "oldest_pending_at": min((r[0] for r in oldest if r), default=None),
            "last_confirmed_at": meta.get("last_confirmed_at"),
            "last_seq": self._seq,
            "db_mb": use.used_mb,
            "disk_free_mb": use.free_mb,
            "budget_mb": self.cfg.budget_mb,
            "disk_tight": use.tight,
            "dropped": dropped,
            "schema_version": SCHEMA_VERSION,
            "path": str(self.path),
        }

    def rows(self, kind: str = "event", state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Rows for display (without their payload), in send order. STATE is one of STATES."""
        table = TABLE[kind]
        cols = (f"{ID_COLUMN[kind]} AS id, {SHOWN_STATE} AS state, priority, attempts, created_at, sent_at, "
                "confirmed_at, rejected"
                + (", seq, severity, media IS NOT NULL AS has_thumbnail" if kind == "event" else ""))
        where = f"WHERE {STATE_FILTER[state]}" if state else ""
        with self._lock:
            cur = self.conn.execute(
                f"SELECT {cols} FROM {table} {where} ORDER BY {table}.state = 'confirmed', priority DESC, id LIMIT ?",
                (limit,))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def iter_events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(state, event payload without media) for every stored event, oldest first."""
        with self._lock:
            rows = self.conn.execute(f"SELECT {SHOWN_STATE}, payload FROM events ORDER BY id").fetchall()
        for state, payload in rows:
            yield state, json.loads(payload)

    def states(self, kind: str = "event") -> dict[str, str]:
        """id -> state (one of STATES) for every row of KIND (tests and tools)."""
        with self._lock:
            return dict(self.conn.execute(f"SELECT {ID_COLUMN[kind]}, {SHOWN_STATE} FROM {TABLE[kind]}").fetchall())

    def rejections(self, since: str | None = None, top: int = 3) -> dict[str, Any]:
        """The rows the server refused for good (since the UTC stamp SINCE, when given, or while the clock was
        unset, as their time is unknown): how many of each kind, the latest refusal, and the TOP reasons with
        their counts, most common first. Reasons are grouped by reason_kind(), since the server names each
        event's own time or id in them."""
        counts: dict[str, int] = {}
        reasons: dict[str, int] = {}
        latest: list[str] = []
        with self._lock:
            for kind, table in TABLE.items():
                rows = self.conn.execute(
                    f"SELECT rejected, confirmed_at FROM {table} WHERE rejected IS NOT NULL "
                    "AND (confirmed_at >= ? OR confirmed_at < ?)", (since or "", CLOCK_SET_AFTER)).fetchall()
                counts[kind] = len(rows)
                for reason, at in rows:
                    key = reason_kind(reason)
                    reasons[key] = reasons.get(key, 0) + 1
                    latest.append(at)
        ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:top]
        return {"count": sum(counts.values()), "events": counts["event"], "coverage": counts["coverage"],
                "last_at": max(latest, default=None),
                "reasons": [{"reason": reason, "count": n} for reason, n in ranked]}

    def close(self) -> None:
        with self._lock:
            if not self.read_only:
                with contextlib.suppress(sqlite3.Error):
                    if self._unsaved_drops:
                        with self._transaction("NORMAL"):
                            self._save_drops()
                        self._unsaved_drops.clear()
                    self.conn.execute("PRAGMA optimize")
            self.conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def _transaction(self, sync: str) -> Iterator[None]:
        if sync != self._sync:
            self._set_sync(sync)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # SQLITE_FULL and friends have already rolled back
                self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def _set_sync(self, sync: str) -> None:
        self.conn.execute(f"PRAGMA synchronous = {sync}")
        self._sync = sync

    def _mark(self, items: Iterable[tuple[str, str]], state: str, allowed: str) -> int:
        by_kind: dict[str, list[str]] = {k: [] for k in KINDS}
        for kind, item_id in items:
            by_kind[kind].append(item_id)
        if not any(by_kind.values()):
            return 0
        now = utc_now_iso()
        column = "sent_at" if state == "sent" else "confirmed_at"
        n = 0
        keys = {(kind, i) for kind, ids in by_kind.items() for i in ids}
        with self._lock:
            try:
                with self._transaction("NORMAL"):
                    for kind, ids in by_kind.items():
                        if ids:
                            cur = self.conn.executemany(
                                f"UPDATE {TABLE[kind]} SET state = ?, {column} = ? WHERE {ID_COLUMN[kind]} = ?"
                                f" AND {allowed}", [(state, now, i) for i in ids])
                            n += cur.rowcount
                    if state == "confirmed" and n:
                        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_confirmed_at', ?)",
                                          (now,))
            except sqlite3.OperationalError as exc:
                if state == "confirmed" and disk_trouble(exc):
                    self._unsaved_confirmed |= keys  # not sent again meanwhile; the caller retries the write
                raise
            if state == "confirmed":
                self._unsaved_confirmed -= keys
        return n

    def _expire(self) -> None:
        self._expired_at = time.monotonic()
        try:
            self.guard.expire(CLOCK_SET_AFTER)
        except sqlite3.OperationalError as exc:  # a full or read-only disk: the next write's turn tries again
            log.warning("outbox: confirmed rows past their retention not deleted: %s", exc)

    def _room_for(self, low_severity: bool, counter: str) -> bool:
        """Run the disk guard when due; False when a low-severity row must be refused."""
        self._writes += 1
        if self._agent and time.monotonic() - self._expired_at >= EXPIRE_EVERY_S:
            self._expire()
        if not self._tight and self._writes % self.cfg.guard_every:
            return True
        use = self.guard.measure()
        if use.tight:
            self.guard.make_room()
            use = self.guard.measure()
        self._tight = use.tight
        self._set_health("full" if use.tight else "ok")
        if use.tight and low_severity:
            self._drop(counter)
            return False
        return True

    def _write_failed(self, exc: sqlite3.OperationalError, counter: str) -> bool:
        if not disk_trouble(exc):
            raise exc
        log.error("outbox write failed, the disk is full: %s", exc)
        self._tight = True
        self._set_health("full")
        self._drop(counter)
        return False

    def _drop(self, counter: str) -> None:
        self.dropped[counter] = self.dropped.get(counter, 0) + 1
        self._count(counter)
        self._unsaved_drops.add(counter)
        # A full disk may refuse even this small update: the count then goes into the next write that works
        # (or close), so `queue stats` and `status`, which read the file, show every refusal in the end.
        with contextlib.suppress(sqlite3.Error):
            with self._transaction("NORMAL"):
                self._save_drops()
            self._unsaved_drops.clear()

    def _save_drops(self) -> None:
        """Within a transaction: the drop counters not yet in the file (the caller forgets them once it commits:
        on a full disk the commit is what fails)."""
        for counter in sorted(self._unsaved_drops):
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                              (f"dropped.{counter}", str(self.dropped[counter])))

    def _load_counters(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT key, value FROM meta WHERE key LIKE 'dropped.%'").fetchall()
        return {k.removeprefix("dropped."): int(v) for k, v in rows}

    def _load_seq(self) -> int:
        stored = self.conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        in_rows = self.conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        return max(int(stored[0]) if stored else 0, in_rows or 0)

    def _requeue_in_flight(self) -> None:
        # A new process has nothing in flight: whatever an earlier one had published is due again now.
        try:
            with self._transaction("NORMAL"):
                for table in TABLE.values():
                    self.conn.execute(f"UPDATE {table} SET due_at = 0 WHERE state != 'confirmed' AND due_at != 0")
        except sqlite3.OperationalError as exc:
            if not disk_trouble(exc):
                raise
            log.warning("outbox: could not make earlier in-flight rows due (%s); ignoring their stored times", exc)
            self._stored_due_stale = True  # their due_at is another process's monotonic clock

    def _set_health(self, state: str) -> None:
        if self.health is not None:
            self.health.update(outbox=state)

    def _count(self, name: str) -> None:
        if self.health is not None:
            self.health.count(name)

    # ----------------------------------------------------------------------------------------- salvage
    def _import_moved_aside(self) -> None:
        """Take back the unconfirmed rows of queues moved aside: whole from a sound file (older agents moved a
        queue aside on a full disk), then renamed *.imported-<stamp>; from a damaged one (a torn write on a card
        that ignores flushes) every row still readable, then renamed *.salvaged-<stamp>. A file SQLite cannot
        open at all stays *.corrupt-* for a person (doctor lists it)."""
        for old in sorted(self.path.parent.glob(f"{self.path.name}.corrupt-*")):
            if old.name.endswith(("-wal", "-shm")):
                continue
            try:
                damage = quick_check(old)
            except sqlite3.DatabaseError as exc:  # disk trouble: says nothing about the file
                log.warning("outbox: could not check %s (%s); trying again at the next start", old, exc)
                continue
            try:
                n, unreadable = self._import_rows(old, damaged=damage is not None)
            except sqlite3.DatabaseError as exc:
                if damage is None or disk_trouble(exc):
                    log.warning("outbox: could not re-import %s (%s); trying again at the next start", old, exc)
                continue  # damaged beyond opening: left for a person to look at
            kind = "imported" if damage is None else "salvaged"
            target = old.with_name(old.name.replace(".corrupt-", f".{kind}-"))
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{old}{suffix}")
                if src.exists():
                    src.rename(Path(f"{target}{suffix}"))
            if damage is None:
                log.warning("outbox: re-imported %d unconfirmed rows from %s (sound, moved aside by an earlier run)",
                            n, old)
            else:
                log.error("outbox: salvaged %d unconfirmed rows from the damaged %s (%s); %s", n, old, damage,
                          f"{unreadable} stretches of rows could not be read: kept as {target}" if unreadable
                          else f"every row read; kept as {target}")
            self._count(f"outbox_{'reimported' if damage is None else 'salvaged'}")

    def _import_rows(self, old: Path, damaged: bool = False) -> tuple[int, int]:
        """Copy OLD's unconfirmed rows in; returns (rows, stretches that could not be read). From a DAMAGED file
        a table that cannot be read whole is read SALVAGE_CHUNK rows at a time (by rowid), so one bad page loses
        its own rows only. Sequence numbers go on from the highest OLD still shows, confirmed rows included."""
        # Columns of the first schema version, so any older sound file can be read.
        events = ("event_id, seq, state, priority, severity, attempts, created_at, sent_at, confirmed_at, payload, "
                  "media")
        coverage = "coverage_id, state, priority, attempts, created_at, sent_at, confirmed_at, payload"
        n = unreadable = 0
        self.conn.execute("ATTACH DATABASE ? AS moved", (str(old),))
        try:
            self.conn.execute("SELECT count(*) FROM moved.sqlite_master").fetchone()  # raises: beyond opening
            for table, cols in (("events", events), ("coverage", coverage)):
                copy = (f"INSERT OR IGNORE INTO main.{table} ({cols}) SELECT {cols} FROM moved.{table} "
                        "WHERE state != 'confirmed'")
                try:
                    with self._transaction("NORMAL"):
                        n += self.conn.execute(copy).rowcount
                    continue
                except sqlite3.DatabaseError:
                    if not damaged:
                        raise
                got, lost = self._copy_in_chunks(copy, table)
                n, unreadable = n + got, unreadable + lost
            self._carry_seq(damaged)
        finally:
            self.conn.execute("DETACH DATABASE moved")
        self._seq = self._load_seq()
        self.changed.set()
        return n, unreadable

    # The sqlite3 shell's .recover reads every page rather than the b-tree, but the one of Debian 12 and Raspberry
    # Pi OS (3.40) fails with "SQL logic error" on this schema, sound or not: rows are read by rowid ranges, so a
    # bad leaf page loses its own rows and a bad interior page those below it.
    def _copy_in_chunks(self, copy: str, table: str) -> tuple[int, int]:
        try:
            last = self.conn.execute(f"SELECT max(rowid) FROM moved.{table}").fetchone()[0] or 0
        except sqlite3.DatabaseError:
            return 0, 1  # not even the table's right edge reads: nothing of it can be found
        got = lost = 0
        for start in range(0, last + 1, SALVAGE_CHUNK):
            try:
                with self._transaction("NORMAL"):
                    got += self.conn.execute(f"{copy} AND rowid BETWEEN ? AND ?",
                                             (start, start + SALVAGE_CHUNK - 1)).rowcount
            except sqlite3.DatabaseError as exc:
                if disk_trouble(exc):
                    raise
                lost += 1
        return got, lost

    def _carry_seq(self, damaged: bool) -> None:
        """The new queue numbers on from the moved one: its stored counter or its highest row, whichever reads."""
        highest = 0
        for query in ("SELECT CAST(value AS INTEGER) FROM moved.meta WHERE key = 'seq'",
                      "SELECT max(seq) FROM moved.events"):
            try:
                row = self.conn.execute(query).fetchone()
            except sqlite3.DatabaseError:
                if not damaged:
                    raise
                continue
            highest = max(highest, int(row[0] or 0) if row else 0)
        if highest:
            with self._transaction("NORMAL"):
                self.conn.execute("INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT (key) DO UPDATE"
                                  " SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                                  (str(highest),))


# What the server writes into a reason that differs from event to event: a time or an id. Replaced by "...",
# so that twelve events refused for being too old read as one reason, twelve times.
_PARTICULARS = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def reason_kind(reason: str) -> str:
    """REASON without the particulars of one event (its times and ids): what several refusals share."""
    return _PARTICULARS.sub("...", reason)


def _split_event(event: dict[str, Any]) -> tuple[str, float, str, str | None]:
    """(event_id, severity, payload JSON without media, media JSON or None); ValueError on bad input."""
    if not isinstance(event, dict):
        raise ValueError(f"an event must be a JSON object, not {type(event).__name__}")
    event_id = event.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("an event needs a string 'event_id'")
    severity = event.get("severity", 0.0)
    if not isinstance(severity, int | float) or isinstance(severity, bool):
        raise ValueError(f"event {event_id}: 'severity' must be a number, not {severity!r}")
    media = {k: event[k] for k in MEDIA_KEYS if k in event}
    rest = {k: v for k, v in event.items() if k not in MEDIA_KEYS}
    try:
        payload = json.dumps(rest, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        media_json = json.dumps(media, separators=(",", ":")) if media else None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"event {event_id} is not JSON-serialisable: {exc}") from None
    return event_id, float(severity), payload, media_json


def _body(payload: str, media: str | None) -> bytes:
    # Splice the media object's members into the payload object without parsing either.
    if media:
        return (payload[:-1] + "," + media[1:]).encode()
    return payload.encode()
