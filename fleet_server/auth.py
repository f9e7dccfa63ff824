"""Bearer tokens: roles map < viewer < manager < admin, plus per-device tokens for POST /detections. A map token
reads the defects without the vehicles (who drove where and when); a viewer reads those too (docs/privacy.md).

A token reads `rmt_<lookup>_<secret>`. Only an argon2id hash is stored; `lookup` (not secret) finds the row
and argon2 compares in constant time. Verified tokens are remembered for `api.token_cache_s` under the
SHA-256 of the token, so the map does not pay an argon2 hash per request; a remembered token is still looked
up by id on every request (an index hit, no hash), so a revoked token stops working at once. At most
`api.max_concurrent_verifications` argon2 checks run at a time, which bounds their memory and CPU.

A source address that keeps failing authentication (`AuthFailures`) is throttled without locking out the valid
tokens that share its address (every client behind one proxy does): a remembered token, or one whose lookup
names an active token, is still checked; only the rest, which would fail anyway, get 429 without any hashing.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from fleet_server.db import one_row

ROLES = ("map", "viewer", "manager", "admin")
RANK = {"device": 0, "map": 1, "viewer": 2, "manager": 3, "admin": 4}
PREFIX = "rmt"
# OWASP's minimum argon2id settings: the tokens are long random strings, a slow hash only guards a stolen table.
_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
_DUMMY_HASH = _hasher.hash("not-a-token")
AUTH_WINDOW_S = 60.0
MAX_TRACKED = 10_000  # source addresses remembered; beyond that the oldest entries are forgotten
ACTIVE = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"  # a token that may be used now


class Throttled(Exception):
    """The caller's address failed authentication too often, and its token cannot be valid; or its token's
    lookup was sent with a wrong secret too often (someone guessing one token's secret)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    role: str
    device_id: str | None
    expires_at: datetime | None = None

    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(UTC)

    def at_least(self, role: str) -> bool:
        return self.role != "device" and RANK[self.role] >= RANK[role]


def new_token() -> tuple[str, str]:
    """(token, lookup) for a fresh token."""
    lookup = secrets.token_hex(8)
    return f"{PREFIX}_{lookup}_{secrets.token_urlsafe(32)}", lookup


def hash_token(token: str) -> str:
    """The stored form of TOKEN (argon2id)."""
    return _hasher.hash(token)


def create_token(conn: psycopg.Connection, role: str, name: str, device_id: str | None = None,
                 expires_in: timedelta | None = None) -> str:
    """Store a new token's hash and return the token (shown once, never stored in clear). EXPIRES_IN None:
    the token does not expire."""
    return insert_token(conn, role, name, device_id, expires_in)[0]


def insert_token(conn: psycopg.Connection, role: str, name: str, device_id: str | None,
                 expires_in: timedelta | None) -> tuple[str, int]:
    """As create_token, returning (token, its id) for `token revoke/rotate ID`."""
    if role not in (*ROLES, "device"):
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    token, lookup = new_token()
    expires_at = None if expires_in is None else datetime.now(UTC) + expires_in
    row = one_row(conn.execute("INSERT INTO api_tokens (lookup, token_hash, name, role, device_id, expires_at) "
                               "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                               (lookup, hash_token(token), name, role, device_id, expires_at)))
    return token, row[0]


def rotate_token(conn: psycopg.Connection, token_id: int, overlap: timedelta, expires_in: timedelta | None
                 ) -> tuple[str, int]:
    """A new token with TOKEN_ID's name, role and device; the old one keeps working for OVERLAP (so clients
    can switch over) and then expires. Returns (new token, its id); LookupError when TOKEN_ID is not active."""
    with conn.transaction():
        row = conn.execute(f"SELECT name, role, device_id, replaced_by FROM api_tokens WHERE id = %s AND {ACTIVE} "
                           "FOR UPDATE", (token_id,)).fetchone()
        if row is None:
            raise LookupError(f"no active token {token_id}")
        if row[3] is not None:  # a second rotation left two live replacements for one holder
            newest = conn.execute("""WITH RECURSIVE chain(id, replaced_by) AS (
                                         SELECT id, replaced_by FROM api_tokens WHERE id = %s
                                         UNION ALL SELECT t.id, t.replaced_by FROM api_tokens t
                                         JOIN chain c ON t.id = c.replaced_by)
                                     SELECT id FROM chain WHERE replaced_by IS NULL""", (row[3],)).fetchone()
            raise LookupError(f"token {token_id} was already rotated: token {newest[0] if newest else row[3]} "
                              "replaces it now (rotate that one)")
        token, new_id = insert_token(conn, row[1], row[0], row[2], expires_in)
        conn.execute("UPDATE api_tokens SET replaced_by = %s, expires_at = LEAST(coalesce(expires_at, 'infinity'), "
                     "now() + %s) WHERE id = %s", (new_id, overlap, token_id))
    return token, new_id


def revoke_tokens(conn: psycopg.Connection, *, device_id: str | None = None, token_id: int | None = None) -> int:
    if device_id is not None:
        cur = conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE device_id = %s AND revoked_at IS NULL",
                           (device_id,))
    else:
        cur = conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
                           (token_id,))
    return cur.rowcount


def _lookup(token: str) -> str:
    """The lookup part of TOKEN (not secret: it finds the row), '' when TOKEN is not shaped like ours."""
    parts = token.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == PREFIX else ""


def lookup_active(conn: psycopg.Connection, token: str) -> bool:
    """Whether TOKEN's lookup names a token that may be used now (an index hit, no hashing)."""
    return one_row(conn.execute(f"SELECT EXISTS (SELECT 1 FROM api_tokens WHERE lookup = %s AND {ACTIVE})",
                                (_lookup(token),)))[0]


def verify(conn: psycopg.Connection, token: str) -> Principal | None:
    """The principal of TOKEN, or None when it is unknown, revoked, expired or wrong."""
    row = conn.execute(f"SELECT id, token_hash, name, role, device_id, expires_at FROM api_tokens "
                       f"WHERE lookup = %s AND {ACTIVE}", (_lookup(token),)).fetchone()
    try:
        if row is None:
            _hasher.verify(_DUMMY_HASH, token)  # same work as a real check: no timing hint that lookup missed
            return None
        _hasher.verify(row[1], token)
    except (VerificationError, InvalidHashError):
        return None
    return Principal(row[0], row[2], row[3], row[4], row[5])


def still_active(conn: psycopg.Connection, who: Principal) -> bool:
    """Whether WHO's token is still unrevoked and unexpired (a primary-key lookup, no hashing). The expiry is
    read from the row, not from WHO: `token rotate` shortens it, and that must take effect at once."""
    row = conn.execute(f"SELECT {ACTIVE} FROM api_tokens WHERE id = %s", (who.token_id,)).fetchone()
    return bool(row and row[0])


class TokenCache:
    """Verified tokens by SHA-256, for a few seconds, and the gate that bounds concurrent argon2 checks."""

    def __init__(self, ttl_s: float, max_concurrent: int = 2, failures_per_minute: int = 20) -> None:
        self.ttl_s = ttl_s
        self._items: dict[bytes, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        self.verifying = threading.BoundedSemaphore(max_concurrent)
        # Wrong secrets per lookup, from any address. The throttle by address lets a token whose lookup is real
        # through to argon2 (one phone's revoked token must not lock out a fleet behind one proxy), so whoever
        # holds one token could send its lookup with endless wrong secrets: each an argon2 check, the checks
        # queued behind the gate with their database connections until the API answered everyone 503.
        self.guessed = AuthFailures(failures_per_minute)

    def verify(self, conn: psycopg.Connection, token: str, throttled_s: int = 0) -> Principal | None:
        """The principal of TOKEN: remembered (and checked for revocation and expiry), else verified with
        argon2. THROTTLED_S > 0 (the caller's address failed too often): a token whose lookup names no active
        token raises Throttled without the argon2 check; a valid token is never refused for its address."""
        who = self.get(token)
        if who is not None:
            if still_active(conn, who):
                return who
            self.forget(token)
            return None
        if throttled_s and not lookup_active(conn, token):
            raise Throttled(throttled_s)
        lookup = _lookup(token)
        guessed_s = self.guessed.retry_after(lookup) if lookup else 0
        if guessed_s:
            raise Throttled(guessed_s)
        with self.verifying:
            who = verify(conn, token)
        if who is not None:
            self.put(token, who)
        elif lookup:
            self.guessed.failed(lookup)
        return who

    def get(self, token: str) -> Principal | None:
        key = hashlib.sha256(token.encode()).digest()
        with self._lock:
            hit = self._items.get(key)
            if hit is None or time.monotonic() - hit[0] > self.ttl_s or hit[1].expired():
                self._items.pop(key, None)
                return None
            return hit[1]

    def forget(self, token: str) -> None:
        with self._lock:
            self._items.pop(hashlib.sha256(token.encode()).digest(), None)

    def put(self, token: str, principal: Principal) -> None:
        if self.ttl_s <= 0:
            return
        key = hashlib.sha256(token.encode()).digest()
        with self._lock:
            if len(self._items) > 10000:
                self._items.clear()
            self._items[key] = (time.monotonic(), principal)


class AuthFailures:
    """Failed authentications per source address within the last AUTH_WINDOW_S."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, source: str) -> int:
        """Seconds SOURCE must wait before a failing attempt may be checked again; 0 when it may."""
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
