"""Where the API's reads go: a streaming read replica when one is configured and fit to answer, else the primary.

Writes, logins (a revoked token must stop working at once, not after the replica's lag) and ingest always use the
primary. A read goes to the replica only when it is up to date within `database.read_max_lag_s` and has replayed
every write this API process made (read-your-writes); otherwise, and for `database.read_retry_s` after the
replica failed to answer, the primary serves it. Behind a load balancer another API process may still answer
from before a write made through this one, for at most read_max_lag_s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, cast

import anyio
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from fleet_server import metrics
from fleet_server.config import DatabaseConfig
from fleet_server.db import make_pool, one_row

log = logging.getLogger(__name__)

# One round trip: is it a replica, how far behind is it, has it replayed the given write. Behind means seconds
# since the last transaction it replayed, or 0 when it has replayed all it received: an idle primary sends
# nothing, and its last replayed transaction grows old without the replica falling behind.
# Caught up is: everything received is replayed, and the receiver is there to receive more. A replica cut off
# from its primary has replayed all it received too, and served frozen data as "0 s behind" for as long as it
# stayed cut off (an outside test of the dashboard's changes): without a receiver its lag is the age of its
# last replayed change (an idle primary then reads as lagging: the primary serves, which is only safe), and
# one restarted while cut off, which has replayed nothing since its start (no timestamp), is behind without end.
_STATE = """
    SELECT pg_is_in_recovery(),
           CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
                     AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0.0
                ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
                              'Infinity') END,
           %(lsn)s::pg_lsn IS NULL OR NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= %(lsn)s::pg_lsn"""
# A request to a replica that is down waits this long for a connection, once per read_retry_s.
_PROBE_TIMEOUT_S = 1.0
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class Reads:
    """Connections for the API's read-only routes."""

    def __init__(self, cfg: DatabaseConfig, primary: ConnectionPool) -> None:
        self.cfg = cfg
        self.primary = primary
        # Made only when the config names a replica: its DSN then is never None.
        self.replica = (make_pool(cfg, cast(Callable[[], str], cfg.resolve_read_dsn), "fleet-api-read")
                        if cfg.resolve_read_dsn() else None)
        self.state = "none" if self.replica is None else "starting"
        self._written_lsn: str | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    @contextmanager
    def connection(self, primary: psycopg.Connection) -> Iterator[psycopg.Connection]:
        """The replica's connection, or PRIMARY (a primary connection the caller holds)."""
        with ExitStack() as stack:
            conn = self._from_replica(stack)
            metrics.API_READS.labels("primary" if conn is None else "replica").inc()
            yield primary if conn is None else conn

    def wrote(self) -> None:
        """Note the primary's WAL position after a write, so that this process's later reads include it."""
        if self.replica is None:
            return
        try:
            with self.primary.connection() as conn:
                lsn = one_row(conn.execute("SELECT pg_current_wal_insert_lsn()::text"))[0]
            with self._lock:  # two writes' answers may come back in either order: keep the later position
                if self._written_lsn is None or _lsn_value(lsn) > _lsn_value(self._written_lsn):
                    self._written_lsn = lsn
        except (psycopg.Error, PoolTimeout) as exc:
            # Without the position a read could miss the write: the primary serves reads for a while.
            log.warning("could not read the primary's write position: %s", exc)
            self._down_until = time.monotonic() + self.cfg.read_retry_s

    def health(self) -> str | None:
        """For /health: None without a replica, else 'ok' or why reads go to the primary (asked afresh)."""
        if self.replica is None:
            return None
        with ExitStack() as stack:
            self._from_replica(stack)
        return self.state

    def close(self) -> None:
        if self.replica is not None:
            self.replica.close()

    def _from_replica(self, stack: ExitStack) -> psycopg.Connection | None:
        if self.replica is None or time.monotonic() < self._down_until:
            return None
        attempt = ExitStack()
        try:
            conn = attempt.enter_context(self.replica.connection(timeout=_PROBE_TIMEOUT_S))
            in_recovery, behind_s, has_writes = one_row(conn.execute(_STATE, {"lsn": self._written_lsn}))
        except (psycopg.Error, PoolTimeout) as exc:
            attempt.close()
            self._down_until = time.monotonic() + self.cfg.read_retry_s
            self._note("unreachable", False,
                       f"read replica unreachable, the primary serves reads for {self.cfg.read_retry_s:g} s: {exc}")
            return None
        if in_recovery and behind_s is not None and behind_s > self.cfg.read_max_lag_s:
            attempt.close()
            self._note(f"lagging {behind_s:.0f} s", False,
                       f"read replica {behind_s:.1f} s behind the primary (more than read_max_lag_s), the primary "
                       f"serves reads")
            return None
        if not has_writes:
            attempt.close()  # this process wrote something the replica has not replayed yet: the primary answers
            return None
        # A promoted replica is the newest copy there is: reading it is still right, but someone should know.
        self._note("ok" if in_recovery else "not in recovery (promoted?)", True, "read replica serves reads")
        stack.enter_context(attempt)  # the connection goes back to the replica's pool with the caller's stack
        return conn

    def _note(self, state: str, serving: bool, message: str) -> None:
        if state != self.state:
            (log.info if state == "ok" else log.warning)(message)
        self.state = state
        assert self.replica is not None  # only _from_replica notes, and only with a replica
        metrics.API_READ_REPLICA_UP.labels(self.replica.name).set(serving)


def _lsn_value(lsn: str) -> int:
    high, low = lsn.split("/")  # PostgreSQL's text form of a WAL position: two hex halves
    return (int(high, 16) << 32) | int(low, 16)


class NoteWrites:
    """ASGI middleware: after a write request succeeds, and before its answer leaves, note the primary's WAL
    position (Reads.wrote), so that a client reading back what it just wrote gets it from this process."""

    def __init__(self, app: Any, reads: Reads) -> None:
        self.app = app
        self.reads = reads

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS or self.reads.replica is None:
            await self.app(scope, receive, send)
            return

        async def send_after_noting(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                await anyio.to_thread.run_sync(self.reads.wrote)
            await send(message)

        await self.app(scope, receive, send_after_noting)
