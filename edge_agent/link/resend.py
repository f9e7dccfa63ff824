"""`cmd/resend`: the fleet server asks the box to send again what the server confirmed since a time.

A server whose database was restored from a backup has lost every event the boxes sent after that backup, while
each box still keeps them, confirmed, for `outbox.retention_days`. `fleet-server cmd resend --since T` asks the
boxes to send again what was confirmed from T on (by the box's clock, so T wants a margin); the server stores each
event once, so what it still has is only confirmed again. `rejected: true` also sends again what the server
refused for good, once a fault of the server's own that refused it is fixed.
"""

from __future__ import annotations

import logging
from typing import Any

from edge_agent.link.outbox import Outbox
from roadmon_contract.commands import zoned_time

log = logging.getLogger(__name__)

COMMAND = "resend"


def handle(outbox: Outbox, payload: dict[str, Any]) -> dict[str, Any]:
    """The result of cmd/resend with PAYLOAD {since?: RFC 3339 time, rejected?: bool}."""
    since, rejected = payload.get("since"), payload.get("rejected", False)
    problem = None
    if not isinstance(rejected, bool):
        problem = "rejected: must be true or false"
    elif since is None and not rejected:
        problem = "give since (an RFC 3339 time, e.g. 2026-12-06T02:00:00Z) and/or rejected: true"
    elif since is not None:
        try:
            since = zoned_time(since)
        except ValueError as exc:
            problem = f"since: {exc}"
    if problem:
        return {"ok": False, "status": "invalid", "reason": problem}
    counts = outbox.resend(since, rejected)
    what = "confirmed" + (f" since {payload['since']}" if since is not None else "") + \
        (" or refused" if rejected else "")
    return {"ok": True, "status": "queued", "events": counts["event"], "coverage": counts["coverage"],
            "reason": f"{counts['event']} events and {counts['coverage']} coverage records the server had {what} "
                      "are sent again"}
