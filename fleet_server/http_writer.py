"""Group commit for HTTP submissions: the submissions that arrive while one transaction runs share the next.

Every submission takes the aggregation lock (`store_batch`), so one transaction per request serialises the
API on it and on one commit each; under 20 concurrent phones that queueing was most of the latency. One writer
thread per API process takes everything waiting, checks each device's hourly budget, stores the accepted
events in ONE `store_batch` and answers each request with the ids that were new for it.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from fleet_server.config import ServerConfig
from fleet_server.db import Reconnecting
from fleet_server.store import Batch, store_batch

log = logging.getLogger(__name__)
MOST_PER_BATCH = 500


class OverRate(Exception):
    """The device used its hourly budget of submissions."""


@dataclass
class Outcome:
    new: set[str]  # this submission's event ids that were stored now
    clashing: set[str]  # its event ids already stored with other content (another device's, or changed fields)


@dataclass
class Submission:
    device_id: str
    events: list[dict]
    done: Future = field(default_factory=Future)  # its Outcome


class SubmissionWriter:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        # Its own connection, not one of the pool's: every waiting request holds a pool connection.
        self._db = Reconnecting(cfg.database)
        self._inbox: queue.Queue[Submission | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="http-writer", daemon=True)
        self._thread.start()

    def store(self, device_id: str, events: list[dict], timeout_s: float = 60.0) -> Outcome:
        """What became of EVENTS, once committed. Raises OverRate, or the database's error."""
        sub = Submission(device_id, events)
        self._inbox.put(sub)
        return sub.done.result(timeout_s)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(10)
        self._db.drop()

    def _run(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            subs = [first]
            while len(subs) < MOST_PER_BATCH:
                try:
                    nxt = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._inbox.put(None)  # stop after this batch
                    break
                subs.append(nxt)
            self._write(subs)

    def _write(self, subs: list[Submission]) -> None:
        try:
            self._store(self._db.get(), subs)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            if len(subs) == 1:
                subs[0].done.set_exception(exc)
                return
            # One body PostgreSQL refuses must not fail the others: each again on its own.
            log.info("a batch of %d HTTP submissions was refused (%s); storing them one by one", len(subs), exc)
            for sub in subs:
                self._write([sub])
        except Exception as exc:  # the database away, or a bug: every waiting request hears of it
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                self._db.drop()
            for sub in subs:
                if not sub.done.done():
                    sub.done.set_exception(exc)


    def _store(self, conn: psycopg.Connection, subs: list[Submission]) -> None:
        limit = self.cfg.api.rate_limit_per_hour
        devices = sorted({s.device_id for s in subs})
        now = datetime.now(UTC)
        with conn.transaction():
            # Devices' submissions counted and added under their locks (in one order: no deadlock with another
            # API process), so concurrent requests cannot race past the limit.
            for device in devices:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (device,))
            used: dict[str, int] = dict(conn.execute(
                "SELECT device_id, count(*) FROM http_submissions WHERE device_id = ANY(%s) "
                "AND at > now() - interval '1 hour' GROUP BY device_id", (devices,)).fetchall())
            fresh = [d for d in devices if d not in used]  # their windows restart: old rows can go
            accepted, over = [], []
            for sub in subs:
                if used.get(sub.device_id, 0) >= limit:
                    over.append(sub)
                    continue
                used[sub.device_id] = used.get(sub.device_id, 0) + 1
                accepted.append(sub)
            stored = store_batch(conn, Batch(events=[(e, now) for s in accepted for e in s.events], source="http"),
                                 self.cfg.aggregate) if accepted else None
            if fresh:
                conn.execute("DELETE FROM http_submissions WHERE device_id = ANY(%s)", (fresh,))
            if accepted:
                conn.execute("INSERT INTO http_submissions (device_id) SELECT unnest(%s::text[])",
                             ([s.device_id for s in accepted],))
        new = set(stored.new_events) if stored else set()
        clashes = {r.ref for r in stored.conflicts} if stored else set()
        for sub in accepted:  # the same body twice in one batch: the first one stored it, the second is a repeat
            ids = {e["event_id"] for e in sub.events}
            mine = ids & new
            new -= mine
            sub.done.set_result(Outcome(mine, (ids - mine) & clashes))
        for sub in over:
            sub.done.set_exception(OverRate())
