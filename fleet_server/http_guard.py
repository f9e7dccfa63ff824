"""HTTP input limits in front of every route (an ASGI middleware): bodies larger than the cap are refused
before they are read (Content-Length) or as soon as they pass it (chunked), and query parameters with NUL or
invalid UTF-8 get 400. (Failed authentication is throttled where the token is checked: `api_deps.principal`.)
Every answer carries the browser's safety headers: no content sniffing (a thumbnail is a device's bytes, served
as image/jpeg), no framing of the dashboard by another site.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

log = logging.getLogger(__name__)

Scope = dict[str, Any]
SAFETY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                  (b"content-security-policy", b"frame-ancestors 'none'"), (b"referrer-policy", b"no-referrer")]


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


class ClientAddress:
    """ASGI middleware, right inside the proxy-header one: a client address that is no IP address (a trusted
    proxy passed on whatever X-Forwarded-For said, e.g. "<script>") becomes "invalid", so the audit log keeps no
    attacker's text and every such request shares one failed-authentication count."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client:
            try:
                ipaddress.ip_address(client[0])
            except ValueError:
                scope = {**scope, "client": ("invalid", client[1] if len(client) > 1 else 0)}
        await self.app(scope, receive, send)


class HttpGuard:
    """ASGI middleware: body cap, clean query strings."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        problem = bad_query(scope.get("query_string", b"")) or ("the path contains a NUL character"
                                                                if "\x00" in scope.get("path", "") else None)
        if problem:
            await answer(send, 400, problem)
            return
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            await answer(send, 413, f"body larger than {self.max_body_bytes} bytes")
            return
        await self._forward(scope, receive, send, (scope.get("client") or ("?", 0))[0])

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
                    await answer(send, 413, f"body larger than {self.max_body_bytes} bytes")
                return {"type": "http.disconnect"}
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent; whatever the route answers after the disconnect goes nowhere
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *SAFETY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except Exception:
            if not refused:
                raise  # a real error: the server's error handling answers it
            log.info("request body over %d bytes from %s refused", self.max_body_bytes, source)


async def answer(send: Any, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """An early JSON answer {"detail": DETAIL} from a middleware, with the safety headers."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *SAFETY_HEADERS, *headers]})
    await send({"type": "http.response.body", "body": body})
