"""Database connections: one-off connections for the CLI, a pool for the API (and one for its reads on a replica,
fleet_server/replica.py), and one reconnecting connection for each long-running writer (ingest workers, the HTTP
group-commit writer)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool

from fleet_server.config import DatabaseConfig

# Times without a zone (an API client's `since=2026-11-28T10:00`) are read as UTC, whatever the server's zone.
# No JIT: ingest's batch statements have cost estimates high enough to trigger it, and compiling them took a
# sizeable part of their run (18 ms of 110 ms for the merge query of a 1000-defect batch).
SESSION_OPTIONS = "-c TimeZone=UTC -c jit=off"


def libpq_timeout(seconds: float) -> int:
    """libpq's connect_timeout for SECONDS: whole seconds, at least 1. Truncated, a configured 0.5 s became 0,
    which libpq reads as "wait for ever": `device ls` hung on a host that accepts and never answers."""
    return max(1, math.ceil(seconds))


@contextmanager
def connect(cfg: DatabaseConfig) -> Iterator[psycopg.Connection]:
    with psycopg.connect(cfg.resolve_dsn(), autocommit=True, connect_timeout=libpq_timeout(cfg.connect_timeout_s),
                         options=SESSION_OPTIONS) as conn:
        yield conn


def one_row(cur: psycopg.Cursor[TupleRow]) -> TupleRow:
    """The row of a query that always gives one (an aggregate, a function's value, INSERT ... RETURNING, a row
    the caller knows is there); a query that gave none is a bug, said as such."""
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("the query gave no row")
    return row


def make_pool(cfg: DatabaseConfig, dsn: Callable[[], str] | None = None,
              name: str = "fleet-api") -> ConnectionPool:
    """The pool for DSN (default: the primary's). It opens in the background: a database that is down does not
    keep the API from starting."""
    # The DSN is a callable, read again for every new connection: a rotated password (dsn_file) is used from
    # the next connection on, without a restart.
    return ConnectionPool(dsn or cfg.resolve_dsn, min_size=cfg.pool_min, max_size=cfg.pool_max, open=True,
                          kwargs={"autocommit": True, "connect_timeout": libpq_timeout(cfg.connect_timeout_s),
                                  "options": SESSION_OPTIONS},
                          timeout=cfg.connect_timeout_s, name=name,
                          # A pooled connection PostgreSQL closed (a restart, a failover) is found and replaced
                          # when it is handed out, not reported to a client as a 503 (a cheap SELECT 1).
                          check=ConnectionPool.check_connection)


class Reconnecting:
    """One connection for a long-running loop, opened on first use and again after it broke or was dropped.
    The DSN is read again on every reconnect: a rotated credential file takes effect without a restart."""

    def __init__(self, cfg: DatabaseConfig) -> None:
        self.cfg = cfg
        self._conn: psycopg.Connection | None = None

    def get(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.cfg.resolve_dsn(), autocommit=True, options=SESSION_OPTIONS,
                                         connect_timeout=libpq_timeout(self.cfg.connect_timeout_s))
        return self._conn

    def drop(self) -> None:
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
