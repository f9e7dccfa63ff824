"""What /health reports: database, broker and ingest, each "ok" or a short reason without raw error text
(the details go to the log, where an operator reads them and a caller cannot)."""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as Late
from typing import Any, TypeVar

import psycopg

from fleet_server.db import libpq_timeout

log = logging.getLogger(__name__)
T = TypeVar("T")
# Few threads: while PostgreSQL is frozen each probe's thread waits on its socket; later probes queue and time out.
_PROBES = ThreadPoolExecutor(max_workers=4, thread_name_prefix="db-probe")
PROBE_S = 2.0


def within(fn: Callable[[], T], timeout_s: float = PROBE_S) -> T:
    """FN's result, or TimeoutError after TIMEOUT_S. A database that stops answering on a connection already open
    (a frozen host, a partition) is waited on by the socket for ever: /health and /metrics gave no answer at all,
    so the probe restarted the pod and the scrape failure paged as "API down" instead of "database"."""
    try:
        return _PROBES.submit(fn).result(timeout_s)
    except Late:
        raise TimeoutError(f"no answer within {timeout_s:g} s") from None


def database_check(connection: Callable[[], Any], timeout_s: float = PROBE_S) -> str:
    """"ok", or "unreachable" when a connection from CONNECTION() (a context manager) does not answer SELECT 1
    within TIMEOUT_S."""
    def select_one() -> None:
        with connection() as conn:
            conn.execute("SELECT 1")

    try:
        within(select_one, timeout_s)
    except Exception as exc:  # any failure means "not healthy"
        log.warning("health: database unreachable: %s", exc)
        return "unreachable"
    return "ok"


def broker_check(workers: list, host: str, port: int) -> str:
    if workers:
        # Up once the broker acknowledged the subscriptions: a message published between the connection and
        # the SUBACK reached no worker (a resend right after a restore's start did; a test's first event too).
        down = sum(not w.connected.is_set() for w in workers)
        waiting = sum(w.connected.is_set() and not w.subscribed.is_set() for w in workers)
        if down:
            why = next((w.trouble for w in workers if not w.connected.is_set() and getattr(w, "trouble", None)), None)
            return f"{down} of {len(workers)} workers disconnected" + (f": {why}" if why else "")
        return "ok" if not waiting else f"{waiting} of {len(workers)} workers not subscribed yet"
    try:
        with socket.create_connection((host, port), timeout=1):
            return "ok"
    except OSError as exc:
        log.warning("health: broker %s:%d unreachable: %s", host, port, exc)
        return "unreachable"


def ingest_check(workers: list, stall_after_s: float) -> str:
    """Degraded when messages wait and no worker of this process has committed for STALL_AFTER_S."""
    stalled = [w for w in workers if w.stalled_s() > stall_after_s]
    if not stalled:
        return "ok"
    waiting = sum(w.waiting() for w in stalled)
    return f"stalled: {waiting} messages waiting, nothing committed for {max(w.stalled_s() for w in stalled):.0f} s"


def checks(app_state: Any) -> dict[str, str]:
    cfg = app_state.cfg
    workers = getattr(app_state, "workers", None) or []
    out = {"database": database_check(lambda: app_state.pool.connection(timeout=PROBE_S)),
           "broker": broker_check(workers, cfg.mqtt.host, cfg.mqtt.port)}
    if workers:
        out["ingest"] = ingest_check(workers, cfg.ingest.stall_after_s)
    return out


class DatabaseProbe:
    """Whether the database answers a new connection, asked at most every EVERY_S: an ingest process whose database
    was unreachable or frozen answered its /health "ok" as long as no message came to fail on."""

    def __init__(self, cfg: Any, every_s: float = 10.0) -> None:
        self.cfg = cfg
        self.every_s = every_s
        self._asked = -math.inf
        self._answer: str | None = None

    def problem(self) -> str | None:
        if time.monotonic() - self._asked >= self.every_s:
            self._asked = time.monotonic()
            # A new connection each time (the workers' own are theirs), given a second more than the pool's.
            answer = database_check(lambda: psycopg.connect(self.cfg.resolve_dsn(), autocommit=True,
                                                            connect_timeout=libpq_timeout(PROBE_S)), PROBE_S + 1)
            self._answer = None if answer == "ok" else answer
        return self._answer


def ingest_process_problem(workers: list, stall_after_s: float, database: DatabaseProbe | None = None) -> str | None:
    """Why an ingest process is not ready (its /health), or None: no worker started yet, one not subscribed
    (the broker down or refusing its login), the database not answering, or a worker stalled on it."""
    if not workers:
        return "starting: no worker yet"
    broker = broker_check(workers, "", 0)
    if broker != "ok":
        return f"broker: {broker}"
    if database is not None and (db := database.problem()):
        return f"database: {db}"
    ingest = ingest_check(workers, stall_after_s)
    return None if ingest == "ok" else f"ingest: {ingest}"
