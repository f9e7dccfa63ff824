"""`fleet-server device`: provision, import, revoke, erase and list devices."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import typer
from rich.table import Table
from rich.text import Text

from fleet_server import auth, commands, mqtt_accounts
from fleet_server.cli_audit import audited
from fleet_server.cli_common import cfg, console, err, fail, print_table
from fleet_server.config import ServerConfig
from fleet_server.db import connect
from fleet_server.device_view import PROBLEM_CODES, STATES, choices, device_rows, wanted
from roadmon_contract import ids, topics
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)
device_app = typer.Typer(help="Provision and revoke devices.", no_args_is_help=True)


@device_app.command("add")
@audited
def device_add(device_id: str = typer.Argument(..., help="Device id = MQTT login = topic segment"),
               name: str | None = typer.Option(None, help="Display name"),
               reissue: bool = typer.Option(False, "--reissue",
                                            help="The device exists: give it a new broker password and HTTP token "
                                                 "and revoke its old tokens (the vehicle needs the new ones)"),
               as_json: bool = typer.Option(False, "--json", help="Print the credentials as JSON")) -> None:
    """Create a device: broker login (password file + ACL), HTTP device token. Credentials print ONCE. An id
    that exists is an error (as in `device import`), unless --reissue."""
    # --reissue takes an existing device's id as it is: ids given before the stricter rule stay usable.
    if not (ids.new_device_id_ok(device_id) or (reissue and ids.DEVICE_ID.fullmatch(device_id))):
        fail(f"invalid device id {device_id!r}: {ids.NEW_DEVICE_ID_RULE}")
    c = cfg()
    if mqtt_accounts.reserved(device_id, c.mqtt.username):
        fail(f"device id {device_id!r} is reserved: {c.mqtt.username!r} and names beginning with "
              f"{mqtt_accounts.RESERVED_PREFIX!r} belong to the server")
    password = mqtt_accounts.new_password()
    from fleet_server.provision import has_login

    orphan_login = has_login(c.broker_files.passwd_file, device_id)
    with connect(c.database) as conn, conn.transaction():
        added = _add_or_reissue(conn, device_id, name, reissue)
        token = auth.create_token(conn, "device", f"device {device_id}", device_id=device_id,
                                  expires_in=timedelta(days=c.api.device_token_days))
        # Before the commit: a broker login that cannot be written leaves no device behind (a row and a token
        # without a login, whose re-try then said "already exists").
        try:
            broker_note = _write_broker_login(c, device_id, password)
        except OSError as exc:
            fail(f"device {device_id!r} not added: cannot write the broker login to "
                  f"{c.broker_files.passwd_file}: {exc.strerror or exc}")
    # A restore from a backup older than the device, or a recreated database: the login was replaced unsaid.
    replaced = (f"{device_id!r} had a broker login but no database row (a database restored or recreated without "
                "the broker's password file?): its login is replaced, and a box using the old password needs the "
                "new one") if added and orphan_login else None
    host, port, public = c.devices.vehicle_address(c.mqtt)
    creds = {"device_id": device_id, "mqtt_host": host, "mqtt_port": port,
             "mqtt_username": device_id, "mqtt_password": password, "http_token": token}
    if as_json:
        print(json.dumps(creds | {"mqtt_address_is_public": public} | ({"warning": replaced} if replaced else {})))
        return
    if replaced:
        err.print(f"warning: {replaced}", style="yellow", markup=False, highlight=False)
    console.print(f"[bold]device {device_id}[/bold]: credentials shown once, store them now")
    for key, value in creds.items():
        print(f"  {key:14s} {value}")  # plain print: a secret must never be wrapped or cut by the terminal
    console.print(broker_note)
    if not public:
        _warn_internal_broker(c)


def _warn_internal_broker(c: ServerConfig) -> None:
    """Say that mqtt_host/mqtt_port are the server's own way to its broker (127.0.0.1, a compose service name),
    which a vehicle cannot reach."""
    console.print(f"note: mqtt_host/mqtt_port ({c.mqtt.host}:{c.mqtt.port}) are the server's own address of its "
                  "broker (mqtt.host, mqtt.port), not necessarily what vehicles reach: give them the broker's "
                  "public TLS address, and set it in server.toml as [devices] broker = \"mqtt.example.org:8883\" "
                  "to have it printed here", style="yellow", markup=False, highlight=False)


def _add_or_reissue(conn: psycopg.Connection, device_id: str, name: str | None, reissue: bool) -> bool:
    """Insert DEVICE_ID (True), or with REISSUE revoke the existing device's tokens (False). Fails (exit 1) for a
    device the server knows without REISSUE, for REISSUE of an unknown one, and for a revoked one: resetting a
    device's broker password unasked locks the vehicle out, and re-adding a revoked id would undo its
    revocation."""
    # Two `device add` of one new id at once (two cron jobs): FOR UPDATE locks no row that is not there yet, and
    # the second died on "duplicate key" instead of being told the device exists.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('device ' || %s))", (device_id,))
    row = conn.execute("SELECT revoked_at FROM devices WHERE id = %s FOR UPDATE", (device_id,)).fetchone()
    if row is None:
        if reissue:
            fail(f"no device {device_id!r} to re-issue credentials for: add it without --reissue")
        conn.execute("INSERT INTO devices (id, name) VALUES (%s, %s)", (device_id, name))
        return True
    if row[0] is not None:
        fail(f"device {device_id!r} is revoked: a revoked id is not given credentials again")
    if not reissue:
        fail(f"device {device_id!r} already exists: `device add --reissue {device_id}` gives it new credentials "
              "(its current ones stop working)")
    if name is not None:
        conn.execute("UPDATE devices SET name = %s WHERE id = %s", (name, device_id))
    revoked = auth.revoke_tokens(conn, device_id=device_id)
    log.info("device %s: credentials re-issued, %d old token(s) revoked", device_id, revoked)
    return False


def _write_broker_login(c: ServerConfig, device_id: str, password: str) -> str:
    files = c.broker_files
    if files.passwd_file is None:
        return "[yellow]broker_files.passwd_file not set: add the MQTT login to the broker yourself[/yellow]"
    mqtt_accounts.set_password(files.passwd_file, device_id, password)
    if files.acl_file is not None:
        mqtt_accounts.ensure_device_patterns(files.acl_file, server_user=c.mqtt.username)
    reloaded = files.pid_file is not None and mqtt_accounts.reload_broker(files.pid_file)
    return f"broker login written to {files.passwd_file}" + ("; broker reloaded" if reloaded else
                                                              "; reload the broker to apply it")


@device_app.command("import")
@audited
def device_import(file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                             help="CSV: device id, then optional group(s) (more cells or a;b)"),
                  out: Path | None = typer.Option(None, "--out", "-o",
                                                  help="Credentials CSV to write (mode 600, never overwritten); "
                                                       "default FILE's name with .credentials.csv"),
                  skip_existing: bool = typer.Option(False, "--skip-existing",
                                                     help="Leave ids that already exist as they are (default: "
                                                          "refuse the whole import, naming their lines)"),
                  http_tokens: bool = typer.Option(False, "--http-tokens",
                                                   help="Also create an HTTP device token per device (argon2: "
                                                        "~20 ms of CPU each)")) -> None:
    """Create many devices at once: one password-file write, one broker reload, one transaction. Nothing is
    written when any row is bad."""
    from fleet_server import provision

    c = cfg()
    target = out or file.with_name(file.name.removesuffix(".csv") + ".credentials.csv")
    t0 = time.monotonic()
    try:
        rows = provision.parse_rows(file.read_text(encoding="utf-8-sig"), c.mqtt.username)
        with connect(c.database) as conn:
            done = provision.import_devices(conn, c, rows, target, skip_existing=skip_existing,
                                            http_tokens=http_tokens)
    except provision.ImportRefused as exc:
        err.print(f"[red]{file}: nothing imported[/red]", soft_wrap=True)
        for problem in exc.problems:
            err.print(f"  {problem}", soft_wrap=True, markup=False)
        raise typer.Exit(1) from None
    except UnicodeDecodeError as exc:
        fail(f"{file}: not UTF-8 text ({exc})")
    elapsed = time.monotonic() - t0
    if done.skipped:
        console.print(f"skipped {len(done.skipped)} existing device(s)")
    if not done.created:
        console.print("no new devices")
        return
    console.print(f"imported {len(done.created)} device(s) in {elapsed:.1f} s; credentials (shown nowhere else) "
                  f"in {target}")
    if not c.devices.vehicle_address(c.mqtt)[2]:
        _warn_internal_broker(c)
    if done.passwd_file is None:
        console.print("[yellow]broker_files.passwd_file not set: add the MQTT logins to the broker yourself[/yellow]")
    else:
        console.print(f"broker logins written to {done.passwd_file}" + (
            "; broker reloaded" if done.broker_reloaded else "; reload the broker to apply them"))


@device_app.command("revoke")
@audited
def device_revoke(device_id: str) -> None:
    """Remove a device's broker login and revoke its tokens (its data stays: `device erase` deletes it)."""
    c = cfg()
    with connect(c.database) as conn, conn.transaction():
        found = conn.execute("UPDATE devices SET revoked_at = now() WHERE id = %s RETURNING id",
                             (device_id,)).fetchone()
        tokens = auth.revoke_tokens(conn, device_id=device_id)
    if found is None:
        fail(f"no device {device_id!r}")
    removed = _remove_broker_login(c, device_id)
    console.print(f"device {device_id} revoked: {tokens} token(s), broker login "
                  f"{'removed' if removed else 'not found in the password file'}")


def _remove_broker_login(c: ServerConfig, device_id: str) -> bool:
    """Take DEVICE_ID out of the broker's password file (and have the broker read it again); whether it was in."""
    if c.broker_files.passwd_file is None:
        return False
    removed = mqtt_accounts.remove_user(c.broker_files.passwd_file, device_id)
    if c.broker_files.pid_file is not None:
        mqtt_accounts.reload_broker(c.broker_files.pid_file)
    return removed


@device_app.command("erase")
@audited
def device_erase(device_id: str,
                 yes: bool = typer.Option(False, "--yes", help="Delete; without it, only say what would go"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Delete everything the server holds about a device (a right-to-erasure request): sightings, tracks, passes,
    command answers, refused messages, tokens and their audit rows, the device, its broker login and the status
    retained at the broker. Defects only it saw are deleted; those others saw too are recounted. Stop the box first
    (a connected box keeps its session until it disconnects)."""
    from fleet_server.erase import erase_device

    if not ids.DEVICE_ID.fullmatch(device_id):
        fail(f"invalid device id {device_id!r}")
    c = cfg()
    if yes:
        _remove_broker_login(c, device_id)
    try:
        with connect(c.database) as conn:
            erased = erase_device(conn, device_id, c.aggregate, dry_run=not yes)
    except LookupError as exc:
        fail(str(exc))
    problem = None
    if yes:
        try:
            commands.clear_retained(c, topics.status(device_id))
        except commands.CommandError as exc:
            problem = (f"the status the broker keeps for it (its last position) was not cleared: {exc}; clear it "
                       f"with: mosquitto_pub -r -n -t {topics.status(device_id)} (as the server's broker user)")
    if as_json:
        print(json.dumps({"device_id": device_id, "erased": yes, "rows": erased.rows,
                          "defects_deleted": erased.defects_deleted, "defects_recounted": erased.defects_recounted,
                          "problem": problem}))
    else:
        rows = ", ".join(f"{n} {table}" for table, n in erased.rows.items())
        console.print(f"{'erased' if yes else 'would erase'} {device_id}: {rows}; defects "
                      f"{'deleted' if yes else 'to delete'} {len(erased.defects_deleted)}, "
                      f"{'recounted' if yes else 'to recount'} {len(erased.defects_recounted)}", markup=False)
        if not yes:
            console.print("nothing deleted: add --yes to delete")
    if problem:
        err.print(f"warning: {problem}", markup=False)
        raise typer.Exit(1)


@device_app.command("ls")
def device_ls(as_json: bool = typer.Option(False, "--json"),
              state: str | None = typer.Option(None, "--state", help=f"Comma list of {', '.join(STATES)}"),
              problem: str | None = typer.Option(None, "--problem",
                                                 help=f"Comma list of problem codes: {', '.join(PROBLEM_CODES)}")
              ) -> None:
    """List devices: state (stale when silent), last seen, queue, and why a box may be quiet (with --state or
    --problem, only those: a fleet of 10,000 was 10,000 lines to grep)."""
    try:
        states, codes = choices(state, "--state", STATES), choices(problem, "--problem", PROBLEM_CODES)
    except ValueError as exc:
        fail(str(exc))
    c = cfg()
    with connect(c.database) as conn:
        every = device_rows(conn, datetime.now(UTC), c.ingest.stale_after_s)
    rows = [r for r in every if wanted(r, states, codes)]
    if as_json:
        print(json.dumps([r | {"last_seen": utc_iso(r["last_seen"], "seconds") if r["last_seen"] else None}
                          for r in rows]))
        return
    table = Table("id", "name", "state", "last seen (UTC)", "queue", "problems")
    for r in rows:
        state = r["state"]
        style = "green" if state == "online" and not r["problems"] else "yellow" if state == "online" else "red"
        table.add_row(r["id"], r["name"] or "", Text(state, style=style),
                      f"{r['last_seen']:%Y-%m-%d %H:%M:%S}" if r["last_seen"] else "-",
                      "" if r["queue_depth"] is None else str(r["queue_depth"]),
                      "; ".join(r["problems"]) or "-")
    print_table(table)
    counts = ", ".join(f"{n} {name}" for name in STATES if (n := sum(r["state"] == name for r in every)))
    troubled = sum(bool(r["problems"]) for r in every)
    console.print(f"{len(rows)} of {len(every)} devices listed (the whole fleet: {troubled} with a problem; "
                  f"{counts or 'none'})")
