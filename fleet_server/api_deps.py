"""What every API route shares: the database connection, the caller's identity and role checks."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date, datetime, time
from typing import Annotated, Any

import psycopg
from fastapi import Depends, HTTPException, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BeforeValidator

from fleet_server import auth, metrics
from fleet_server.db import one_row
from fleet_server.validate import as_utc

_SPACED_OFFSET = re.compile(r"(.*[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s(\d{2}(?::?\d{2})?)")  # a time, " 03:00"


def _plus_sent_as_a_space(value: Any) -> Any:
    """`since=2026-12-06T06:00:00+03:00` typed into a URL: its '+' arrives as a space (form encoding), which
    gave a 400 "unexpected extra characters" to every east-of-UTC manager. A space before an offset can only
    have been a '+'."""
    if isinstance(value, str) and (m := _SPACED_OFFSET.fullmatch(value.strip())):
        return f"{m[1]}+{m[2]}"
    return value


def _not_a_number(value: Any) -> Any:
    """`until=2026` (the year) was read as 2026 seconds after 1970 and answered 200 with nothing: pydantic reads a
    number as Unix time (and a large one as milliseconds). The API takes ISO 8601 dates and times only."""
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", value):
        raise ValueError("a date or date-time such as 2026-12-06 or 2026-12-06T06:00:00Z, not a number")
    return value


# A time in a query parameter: without a zone it is UTC (as the API documents); one outside what Python and
# PostgreSQL can hold is a 400 naming the parameter, not a 500 from the database.
QueryTime = Annotated[datetime, BeforeValidator(_plus_sent_as_a_space), BeforeValidator(_not_a_number),
                      AfterValidator(lambda value: as_utc(value, naive_is_utc=True))]


def _end_of_a_bare_date(value: Any) -> Any:
    """'2026-05-12' as an upper bound means the whole of that day (UTC): read as its midnight, `since=D&until=D`
    answered nothing for a day with defects."""
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        try:
            return datetime.combine(date.fromisoformat(value.strip()), time.max)
        except ValueError:
            return value  # not a calendar date: the datetime check names it
    return value


# An upper bound: as QueryTime, but a date alone is the end of that day.
QueryUntil = Annotated[datetime, BeforeValidator(_end_of_a_bare_date), BeforeValidator(_plus_sent_as_a_space),
                       BeforeValidator(_not_a_number), AfterValidator(lambda value: as_utc(value, naive_is_utc=True))]


CACHE_BUSTERS = {"_"}  # jQuery's cache: false and similar clients add ?_=<time> to every GET: not a filter


def query_check(request: Request) -> None:
    """400 naming a query parameter the route does not take: `min_confidence=0.99` or `sort=-severity` once
    answered 200 with every defect, unfiltered, and a client could not tell."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    known = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known - CACHE_BUSTERS)
    if unknown:
        raise HTTPException(400, f"unknown query parameter {unknown[0][:40]!r}; {request.url.path} takes "
                                 f"{', '.join(sorted(known)) or 'none'}")
    # Every parameter takes one value (lists are comma lists): `state=online&state=stopped` used the last alone.
    names = Counter(name for name, _ in request.query_params.multi_items() if name not in CACHE_BUSTERS)
    if twice := sorted(name for name, n in names.items() if n > 1):  # a Counter: list.count made 7,000 repeats 0.9 s
        raise HTTPException(400, f"query parameter {twice[0][:40]!r} given more than once; give a comma list "
                                 "where it takes several values")


def _query_names(dependant: Any) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def db(request: Request) -> Iterator[psycopg.Connection]:
    """A connection to the primary: for writes, and for reads that must see the newest state (logins)."""
    with request.app.state.pool.connection() as conn:
        yield conn


def read_db(request: Request, primary: psycopg.Connection = Depends(db)) -> Iterator[psycopg.Connection]:
    """A connection for a read-only route: the read replica when one is configured and fit (fleet_server/replica.py),
    else the request's primary connection (the login check holds one anyway)."""
    with request.app.state.reads.connection(primary) as conn:
        yield conn


# The database's history, across which transaction ids mean nothing: its cluster (a restore into another), its
# timeline (a failover starts a new one; a replica reads it from its last restartpoint) and its defects table (a
# restore of the documented pg_dump creates it anew, into the same cluster too, where transaction ids go on
# counting: open tabs kept defects the restore had removed). A read replica has its primary's three.
_SYNC_POINT = """SELECT (SELECT system_identifier FROM pg_control_system())::text || '.' ||
        CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END || '.' ||
        'defects'::regclass::oid::text,
    pg_snapshot_xmin(pg_current_snapshot())::text, pg_snapshot_xmax(pg_current_snapshot())::text,
    pg_is_in_recovery()"""
# <cluster>.<timeline>.<table>.<transaction id>. Tokens of servers before 0.3.0 (without the table part) are taken,
# to be answered 410 (load everything again) rather than 400.
TOKEN_PATTERN = r"^[0-9]{1,20}\.[0-9]{1,10}(\.[0-9]{1,10})?\.[0-9]{1,19}$"


def since_token_query(only: str) -> Any:
    """The `since_token` parameter of a route whose answers carry a sync_token; ONLY says what it then answers."""
    return Query(None, pattern=TOKEN_PATTERN, description="An earlier answer's sync_token (of its pages, the one "
                 f"whose last part, a transaction id, is smallest; 410: load everything again): only {only}")


def sync_point(conn: psycopg.Connection, since_token: str | None) -> tuple[str, str | None]:
    """(this answer's sync_token, the transaction id to ask changes from). Read before the answer's rows: the
    token's id is the oldest transaction still running then (its snapshot's xmin), so anything the rows cannot
    show was written by a transaction at or above it, committed later however long it waited. SINCE_TOKEN from
    another history (a restore, a failover), or from beyond this primary's transactions, is 410: its ids would
    silently skip changes (an outside test restored the documented pg_dump and the copy heard of nothing)."""
    history, xmin, xmax, replica = one_row(conn.execute(_SYNC_POINT))
    token = f"{history}.{xmin}"
    if since_token is None:
        return token, None
    their_history, _, xid = since_token.rpartition(".")
    if their_history != history or (not replica and int(xid) > int(xmax)):
        raise HTTPException(410, "since_token: not from this database's history (a restore or a failover since) "
                                 "or not a token it gave: load everything again, without since_token")
    return token, xid


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# Declares the scheme in the OpenAPI document (generated clients send the header); `bearer` reads the token.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="An API token: rmt_<lookup>_<secret>")


def principal(request: Request, conn: psycopg.Connection = Depends(db),
              _declared: HTTPAuthorizationCredentials | None = Security(BEARER)) -> auth.Principal:
    """The caller. No credentials at all: 403, as FastAPI's HTTPBearer answers and the deployment guide's
    tests assert; a token that is present but unknown, revoked or expired: 401 with WWW-Authenticate (RFC 6750),
    so a client can tell "log in" from "your key is no longer valid"."""
    token = bearer(request)
    if token is None:
        raise HTTPException(403, "Not authenticated: send Authorization: Bearer <token>")
    who = _authenticate(request, conn, token)
    if who is None:
        request.state.principal = None
        raise HTTPException(401, "invalid, expired or revoked token", headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = who  # for the audit log
    return who


def _authenticate(request: Request, conn: psycopg.Connection, token: str) -> auth.Principal | None:
    """TOKEN's principal, or None. An address that failed too often gets 429 for tokens that cannot be valid
    only: behind a proxy every client shares one address, and one phone with a revoked token must not lock
    out the fleet (the client's own address comes from api.trusted_proxies' X-Forwarded-For)."""
    failures: auth.AuthFailures = request.app.state.auth_failures
    source = request.client.host if request.client else "?"
    try:
        who = request.app.state.tokens.verify(conn, token, throttled_s=failures.retry_after(source))
    except auth.Throttled as exc:
        metrics.API_AUTH_THROTTLED.inc()
        raise HTTPException(429, "too many failed authentications from this address",
                            headers={"Retry-After": str(exc.retry_after_s)}) from None
    if who is None:
        failures.failed(source)
    return who


def known_query_only(request: Request, who: auth.Principal = Depends(principal)) -> None:
    """query_check once the caller is known and allowed: a call without a token is refused as such (403, not
    400), a token without the route's role too (a device token's `?x=1` on a viewer's route was a 400 naming
    the parameter), and a bad parameter in a call that may be made is audited under its token (it read
    "unchecked token"). Runs before the route's own parameters are read (FastAPI runs a router's dependencies
    first), so the role is taken from the route's `require` here."""
    route = request.scope.get("route")
    role = _required_role(route.dependant) if route is not None and hasattr(route, "dependant") else None
    if role is not None and not who.at_least(role):
        raise HTTPException(403, f"needs the {role} role")
    query_check(request)


def _required_role(dependant: Any) -> str | None:
    for sub in dependant.dependencies:
        role = getattr(sub.call, "required_role", None) or _required_role(sub)
        if role is not None:
            return role
    return None


def require(role: str) -> Callable[..., auth.Principal]:
    """A dependency that lets through users of ROLE or higher (device tokens never)."""

    def check(who: auth.Principal = Depends(principal)) -> auth.Principal:
        if not who.at_least(role):
            raise HTTPException(403, f"needs the {role} role")
        return who

    check.required_role = role  # type: ignore[attr-defined]  # read by known_query_only
    return check


def token_if_any(request: Request, conn: psycopg.Connection = Depends(db)) -> None:
    """For a route a signed link opens without a token: a token that is there is checked first, so that a bad
    parameter is audited under it (as on every other route), then the parameters."""
    if bearer(request) is not None:
        principal(request, conn, None)
    query_check(request)
