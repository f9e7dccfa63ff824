"""What every API route shares: the database connection, the caller's identity and role checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
from fastapi import Depends, HTTPException, Request

from fleet_server import auth


def db(request: Request) -> Iterator[psycopg.Connection]:
    with request.app.state.pool.connection() as conn:
        yield conn


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def principal(request: Request, conn: psycopg.Connection = Depends(db)) -> auth.Principal:
    """The caller. No credentials at all: 403, as FastAPI's HTTPBearer answers and the deployment guide's
    tests assert; a token that is present but unknown, revoked or expired: 401 with WWW-Authenticate (RFC 6750),
    so a client can tell "log in" from "your key is no longer valid"."""
    token = bearer(request)
    if token is None:
        raise HTTPException(403, "Not authenticated: send Authorization: Bearer <token>")
    cache: auth.TokenCache = request.app.state.tokens
    who = cache.verify(conn, token)
    if who is None:
        request.state.principal = None
        raise HTTPException(401, "invalid, expired or revoked token", headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = who  # for the audit log
    return who


def require(role: str) -> Callable[..., auth.Principal]:
    """A dependency that lets through users of ROLE or higher (device tokens never)."""

    def check(who: auth.Principal = Depends(principal)) -> auth.Principal:
        if not who.at_least(role):
            raise HTTPException(403, f"needs the {role} role")
        return who

    return check
