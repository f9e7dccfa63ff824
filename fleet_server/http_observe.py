"""Latency, submission counts and the audit log of every HTTP request, whatever answered it: a route, the
guard's early 400 and 413, a throttle's 429, or the server's 500 for an exception.

An ASGI middleware outside every other layer of the app: a timing middleware inside the guard never saw the
guard's refusals, and one wrapped around `call_next` never saw the 500 of an exception (the exception passed
through it to the server's error handler), so `road_detection_submissions_total{status="failed"}` and
`road_api_latency_seconds` missed exactly the failures an alert is for.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fleet_server import api_detections, audit, metrics

log = logging.getLogger(__name__)

Scope = dict[str, Any]

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_path(scope: Scope) -> str:
    """The route template of the request (the metrics' `route` label), 'other' when no route takes it."""
    route = scope.get("route")
    if route is None:
        # Answered before routing (the guard's 400 and 413): the upload routes, where large bodies go, have
        # fixed paths and are named; anything else stays 'other', so that clients cannot invent labels.
        return scope["path"] if scope["path"] in api_detections.PATHS else "other"
    return getattr(route, "path", None) or "other"


def request_method(scope: Scope) -> str:
    """The metrics' `method` label: HTTP's methods by name, 'other' for any other token a client sends (the server
    answers them 405; as labels they would make a new series per request)."""
    method = scope["method"]
    return method if method in HTTP_METHODS else "other"


def path_and_query(scope: Scope) -> str:
    """The audit log's path: with the query, which says whose tracks, which days or which area a call read (the
    path alone could not tell a data-protection officer what an export held)."""
    query = scope.get("query_string", b"")
    return scope["path"] + ("?" + query.decode("latin-1") if query else "")


class Observe:
    """ASGI middleware: records each HTTP request's outcome once its answer has started (or it failed)."""

    def __init__(self, app: Any, audit_log: audit.AuditLog) -> None:
        self.app = app
        self.audit_log = audit_log

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        status = 500  # what the server's error handler (outside this layer) answers when an exception escapes

        async def watched_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            self._record(scope, status, time.monotonic() - t0)

    def _record(self, scope: Scope, status: int, elapsed_s: float) -> None:
        method, path = request_method(scope), route_path(scope)
        metrics.API_LATENCY.labels(method, path).observe(elapsed_s)
        metrics.API_RESPONSES.labels(method, path, str(status)).inc()
        if method == "POST" and path in api_detections.PATHS:
            metrics.count_submission(status)
        if any(name.lower() == b"authorization" for name, _ in scope.get("headers", [])):
            # Every call that presented a token, whatever came of it.
            principal = scope.get("state", {}).get("principal", audit.UNCHECKED)
            client = scope["client"][0] if scope.get("client") else None
            self.audit_log.add(audit.entry(principal, method, path_and_query(scope), status, client))
