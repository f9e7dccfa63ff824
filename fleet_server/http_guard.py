"""HTTP input limits in front of every route (an ASGI middleware): bodies larger than the cap are refused
before they are read (Content-Length) or as soon as they pass it (chunked), query parameters with NUL or
invalid UTF-8 get 400, and a source address that keeps failing authentication gets 429 with Retry-After, so
guessing tokens cannot keep the argon2 verifier (and the CPU) busy.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import unquote_to_bytes

from fleet_server import metrics

log = logging.getLogger(__name__)

Scope = dict[str, Any]
AUTH_WINDOW_S = 60.0
MAX_TRACKED = 10_000  # source addresses remembered; beyond that the oldest entries are forgotten


class AuthFailures:
    """Failed authentications per source address within the last AUTH_WINDOW_S."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, source: str) -> int:
        """Seconds SOURCE must wait before authenticating again; 0 when it may."""
        now = time.monotonic()
        with self._lock:
            times = self._seen.get(source)
            if times is None:
                return 0
            while times and times[0] <= now - AUTH_WINDOW_S:
                times.popleft()
            if len(times) < self.limit:
                return 0
            return max(1, int(times[0] + AUTH_WINDOW_S - now + 0.999))

    def failed(self, source: str) -> None:
        with self._lock:
            if source not in self._seen and len(self._seen) >= MAX_TRACKED:
                self._seen.pop(next(iter(self._seen)))
            self._seen.setdefault(source, deque(maxlen=self.limit)).append(time.monotonic())


def bad_query(query_string: bytes) -> str | None:
    """Why QUERY_STRING cannot be taken (NUL, invalid UTF-8), or None."""
    for part in query_string.split(b"&"):
        value = unquote_to_bytes(part.replace(b"+", b" "))
        if b"\x00" in value:
            return "a query parameter contains a NUL character"
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return "a query parameter is not UTF-8"
    return None


class HttpGuard:
    """ASGI middleware: body cap, clean query strings, per-address throttling of failed authentication."""

    def __init__(self, app: Any, max_body_bytes: int, auth_failures_per_minute: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.failures = AuthFailures(auth_failures_per_minute)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        problem = bad_query(scope.get("query_string", b"")) or ("the path contains a NUL character"
                                                                if "\x00" in scope.get("path", "") else None)
        if problem:
            await _answer(send, 400, problem)
            return
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            await _answer(send, 413, f"body larger than {self.max_body_bytes} bytes")
            return
        source = (scope.get("client") or ("?", 0))[0]
        wait = self.failures.retry_after(source) if b"authorization" in headers else 0
        if wait:
            metrics.API_AUTH_THROTTLED.inc()
            await _answer(send, 429, "too many failed authentications from this address",
                          [(b"retry-after", str(wait).encode())])
            return
        await self._forward(scope, receive, send, source)

    async def _forward(self, scope: Scope, receive: Any, send: Any, source: str) -> None:
        read = 0
        started = refused = False

        async def capped_receive() -> dict:
            # Past the cap the client gets 413 at once and the route sees a disconnect, so it stops reading.
            nonlocal read, refused
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.max_body_bytes and not refused:
                refused = True
                if not started:
                    await _answer(send, 413, f"body larger than {self.max_body_bytes} bytes")
                return {"type": "http.disconnect"}
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent; whatever the route answers after the disconnect goes nowhere
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 401:
                    self.failures.failed(source)
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except Exception:
            if not refused:
                raise  # a real error: the server's error handling answers it
            log.info("request body over %d bytes from %s refused", self.max_body_bytes, source)


async def _answer(send: Any, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
