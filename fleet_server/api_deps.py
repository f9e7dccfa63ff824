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
    """The caller, or 401."""
    token = bearer(request)
    if token is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    cache: auth.TokenCache = request.app.state.tokens
    who = cache.verify(conn, token)
    if who is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return who


def require(role: str) -> Callable[..., auth.Principal]:
    """A dependency that lets through users of ROLE or higher (device tokens never)."""

    def check(who: auth.Principal = Depends(principal)) -> auth.Principal:
        if not who.at_least(role):
            raise HTTPException(403, f"needs the {role} role")
        return who

    return check
