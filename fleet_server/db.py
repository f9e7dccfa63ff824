"""Database connections: one-off connections for the CLI and a pool for the API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from fleet_server.config import DatabaseConfig

# Times without a zone (an API client's `since=2026-11-28T10:00`) are read as UTC, whatever the server's zone.
UTC_OPTIONS = "-c TimeZone=UTC"


@contextmanager
def connect(cfg: DatabaseConfig) -> Iterator[psycopg.Connection]:
    with psycopg.connect(cfg.resolve_dsn(), autocommit=True, connect_timeout=int(cfg.connect_timeout_s),
                         options=UTC_OPTIONS) as conn:
        yield conn


def make_pool(cfg: DatabaseConfig) -> ConnectionPool:
    return ConnectionPool(cfg.resolve_dsn(), min_size=cfg.pool_min, max_size=cfg.pool_max, open=True,
                          kwargs={"autocommit": True, "connect_timeout": int(cfg.connect_timeout_s),
                                  "options": UTC_OPTIONS},
                          timeout=cfg.connect_timeout_s, name="fleet-api")
