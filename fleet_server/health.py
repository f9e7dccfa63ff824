"""What /health reports: database, broker and ingest, each "ok" or a short reason without raw error text
(the details go to the log, where an operator reads them and a caller cannot)."""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger(__name__)


def database_check(pool: Any) -> str:
    try:
        with pool.connection(timeout=2) as conn:
            conn.execute("SELECT 1")
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
            return f"{down} of {len(workers)} workers disconnected"
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
    out = {"database": database_check(app_state.pool), "broker": broker_check(workers, cfg.mqtt.host, cfg.mqtt.port)}
    if workers:
        out["ingest"] = ingest_check(workers, cfg.ingest.stall_after_s)
    return out
