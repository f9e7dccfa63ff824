"""The audit log: every API call that presented a token (who, what, when, outcome), in PostGIS's `audit_log`
(and the server commands that change data, fleet_server.cli_audit).

Rows are queued by the request and written by one thread in batches, so a call does not wait for the insert.
A write that fails (PostGIS away) keeps the rows and tries again; at `max_pending` rows the oldest are dropped
and counted, since an audit log must not take the API down with it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from prometheus_client import Counter
from psycopg_pool import ConnectionPool, PoolTimeout

from fleet_server.auth import Principal

log = logging.getLogger(__name__)
AUDIT_DROPPED = Counter("road_audit_dropped", "Audit rows dropped because PostGIS was away too long")


@dataclass(frozen=True)
class Entry:
    at: datetime
    token_id: int | None
    who: str
    role: str | None
    method: str
    path: str
    status: int
    client: str | None


UNCHECKED = object()  # the route never looked at the token (e.g. /health)


def entry(principal: Principal | object | None, method: str, path: str, status: int, client: str | None) -> Entry:
    """The row of one call; PRINCIPAL None: the token it presented was refused; UNCHECKED: not looked at."""
    if not isinstance(principal, Principal):
        who = "invalid token" if principal is None else "unchecked token"
        return Entry(datetime.now(UTC), None, who, None, method, path[:500], status, client)
    return Entry(datetime.now(UTC), principal.token_id, principal.name, principal.role, method, path[:500], status,
                 client)


def write(conn: psycopg.Connection, items: list[Entry]) -> None:
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO audit_log (at, token_id, who, role, method, path, status, client) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        [(e.at, e.token_id, e.who, e.role, e.method, e.path, e.status, e.client) for e in items])


class AuditLog:
    def __init__(self, pool: ConnectionPool, flush_s: float = 0.5, max_pending: int = 100_000) -> None:
        self.pool = pool
        self.flush_s = flush_s
        self._pending: deque[Entry] = deque(maxlen=max_pending)
        self._cond = threading.Condition()
        self._flushing = threading.Lock()  # one flush at a time: a reader's flush waits for one in progress
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="audit-log", daemon=True)
        self._thread.start()

    def add(self, item: Entry) -> None:
        with self._cond:
            if len(self._pending) == self._pending.maxlen:
                AUDIT_DROPPED.inc()
            self._pending.append(item)

    def flush(self) -> bool:
        """Write what is pending now; False when PostGIS refused (the rows stay queued)."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> bool:
        if self.pool.closed:  # the app is shutting down without close() (a test's bare TestClient)
            return False
        with self._cond:
            items = list(self._pending)
            self._pending.clear()
        if not items:
            return True
        try:
            with self.pool.connection(timeout=2) as conn:
                write(conn, items)
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("audit log: %d rows wait, PostGIS refused: %s", len(items), exc)
            with self._cond:
                assert self._pending.maxlen is not None  # made with maxlen=max_pending
                room = self._pending.maxlen - len(self._pending)
                AUDIT_DROPPED.inc(max(0, len(items) - room))
                self._pending.extendleft(reversed(items[-room:] if room else []))
            return False
        return True

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(5)
        self.flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait(self.flush_s)
                if self._stopping:
                    return
            self.flush()
