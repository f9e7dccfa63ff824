"""At most `api.max_concurrent_requests` API requests run at once; the rest wait their turn in the event loop
(an ASGI middleware).

Why: the routes are synchronous, and their dependencies take a pooled database connection in one of anyio's 40
worker threads. A flood of 48 requests at once, no token needed, made the API answer everyone 503: once every
thread waited for a connection, the requests holding one could not get a thread to run on and give it back,
until the pool's timeout. Waiting here costs no thread, and a request let through always finds one (the limit
defaults to the pool's size). A request that waits longer than `api.queue_wait_s` gets 503 with Retry-After.
/health and /metrics are not held up: a probe must answer while the API is busy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fleet_server import metrics
from fleet_server.http_guard import answer

log = logging.getLogger(__name__)

LIMITED_PREFIXES = ("/api/", "/v1/")


class Bulkhead:
    """ASGI middleware: a bounded number of API requests in progress, the others queued (first come, first
    served)."""

    def __init__(self, app: Any, limit: int, wait_s: float) -> None:
        self.app = app
        self.limit = limit
        self.wait_s = wait_s
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop, on the first request
        self._last_log = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(LIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_s)
        except TimeoutError:
            metrics.API_BUSY.inc()
            self._say_busy()
            await answer(send, 503, "busy: too many requests at once, try again", [(b"retry-after", b"1")])
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()

    def _say_busy(self) -> None:
        now = time.monotonic()
        if now - self._last_log > 10:  # a flood would log every refused request
            self._last_log = now
            log.warning("API busy: requests waited over %.0f s for one of %d slots; answering 503",
                        self.wait_s, self.limit)
