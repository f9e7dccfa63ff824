"""`fleet-server token`: API tokens for people and programs."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import typer
from rich.table import Table

from fleet_server import auth
from fleet_server.cli_audit import audited
from fleet_server.cli_common import cfg, console, fail, print_table
from fleet_server.config import ServerConfig
from fleet_server.db import connect, one_row
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)
# A token's lifetime in days at most: a century is "for ever" for a fleet, and 3,000,000 days overflowed the date.
MAX_TOKEN_DAYS = 36500
token_app = typer.Typer(help="API tokens for people and programs.", no_args_is_help=True)


@token_app.command("create")
@audited
def token_create(role: str = typer.Option(..., "--role",
                                          help="map (defects only, no vehicles), viewer, manager or admin"),
                 name: str = typer.Option(..., "--name", help="Who or what uses it"),
                 days: int | None = typer.Option(None, "--days", min=1, max=MAX_TOKEN_DAYS,
                                                 help="Lifetime; api.user_token_days when not given"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Create an API token; it is printed once (only its hash is stored)."""
    if role not in auth.ROLES:
        fail(f"unknown role {role!r}: use one of {', '.join(auth.ROLES)}")
    c = cfg()
    lifetime = timedelta(days=days or c.api.user_token_days)
    with connect(c.database) as conn:
        token, token_id = auth.insert_token(conn, role, name, None, lifetime)
    # Its expiry, so that whoever hands it out knows when it stops (it said nothing of it).
    expires = utc_iso(datetime.now(UTC) + lifetime, "seconds")
    if as_json:
        print(json.dumps({"id": token_id, "name": name, "role": role, "token": token, "expires_at": expires}))
    else:
        console.print(f"[bold]{role}[/bold] token {token_id} for {name}, expires {expires} (shown once):",
                      markup=True, highlight=False)
        print(token)


@token_app.command("rotate")
@audited
def token_rotate(token_id: int,
                 overlap_hours: float = typer.Option(24.0, "--overlap-hours", min=0, max=MAX_TOKEN_DAYS * 24,
                                                     help="How long the old token keeps working"),
                 days: int | None = typer.Option(None, "--days", min=1, max=MAX_TOKEN_DAYS,
                                                 help="The new token's lifetime; default the old token's own "
                                                      "(a device token's: api.device_token_days)"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """A new token for TOKEN_ID's holder (same name, role, device and lifetime); the old one expires after the
    overlap. The new token is printed once."""
    c = cfg()
    with connect(c.database) as conn:
        with conn.transaction():
            # Locked until the rotation commits: the lifetime is read from the row that is rotated.
            row = conn.execute("SELECT role, expires_at - created_at FROM api_tokens WHERE id = %s FOR UPDATE",
                               (token_id,)).fetchone()
            lifetime = _rotated_lifetime(c, row, days)
            try:
                token, new_id = auth.rotate_token(conn, token_id, timedelta(hours=overlap_hours), lifetime)
            except LookupError as exc:
                fail(str(exc))
        # The old token keeps its own expiry when that comes before the overlap ends.
        old_until, new_until = (one_row(conn.execute("SELECT expires_at FROM api_tokens WHERE id = %s", (i,)))[0]
                                for i in (token_id, new_id))
    if as_json:
        print(json.dumps({"id": new_id, "replaces": token_id, "token": token,
                          "replaced_until": utc_iso(old_until, "seconds"),
                          "expires_at": utc_iso(new_until, "seconds") if new_until else None}))
    else:
        console.print(f"token {new_id} replaces {token_id}, which stops working at {minute(old_until)} UTC; "
                      f"token {new_id} expires at {minute(new_until, 'never')}{' UTC' if new_until else ''} "
                      "(shown once):")
        print(token)


def _rotated_lifetime(c: ServerConfig, row: tuple | None, days: int | None) -> timedelta:
    """The replacement's lifetime: --days when given; a device token's is the device rule; a person's token
    keeps its own (rotating a 1-day contractor token must not yield a year-long one). ROW: (role, expires_at -
    created_at) of the old token, None when there is none (rotate_token then says so)."""
    if days is not None:
        return timedelta(days=days)
    role, kept = row if row is not None else (None, None)
    if role == "device":
        return timedelta(days=c.api.device_token_days)
    # A token without an expiry (made before tokens expired) gets the default rather than living for ever.
    return kept if kept is not None and kept > timedelta(0) else timedelta(days=c.api.user_token_days)


def minute(when: datetime | None, none: str = "") -> str:
    """WHEN to the minute in UTC, for people (NONE without one)."""
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M}" if when else none


@token_app.command("revoke")
@audited
def token_revoke(token_id: int) -> None:
    """Revoke a token by its id (see `token ls`)."""
    with connect(cfg().database) as conn:
        n = auth.revoke_tokens(conn, token_id=token_id)
    if not n:
        fail(f"no active token {token_id}")
    console.print(f"token {token_id} revoked")


@token_app.command("ls")
def token_ls(as_json: bool = typer.Option(False, "--json",
                                          help="Print the list as JSON (times UTC, RFC 3339)")) -> None:
    """List tokens (never their secrets)."""
    with connect(cfg().database) as conn:
        rows = conn.execute("SELECT id, name, role, device_id, created_at, revoked_at, expires_at, replaced_by "
                            "FROM api_tokens ORDER BY id").fetchall()
    now = datetime.now(UTC)
    if as_json:  # a cron job that warns of tokens about to expire read a box-drawn table
        print(json.dumps([{"id": r[0], "name": r[1], "role": r[2], "device_id": r[3],
                           "created_at": utc_iso(r[4], "seconds"), "revoked_at": r[5] and utc_iso(r[5], "seconds"),
                           "expires_at": r[6] and utc_iso(r[6], "seconds"),
                           "expired": r[6] is not None and r[6] <= now, "replaced_by": r[7]} for r in rows]))
        return
    table = Table("id", "name", "role", "device", "created (UTC)", "revoked (UTC)", "expires (UTC)", "replaced by")
    for r in rows:
        expires = minute(r[6], "never") + (" (expired)" if r[6] is not None and r[6] <= now else "")
        table.add_row(str(r[0]), r[1], r[2], r[3] or "", minute(r[4]), minute(r[5]), expires,
                      "" if r[7] is None else str(r[7]))
    print_table(table)
