"""`fleet-server`: migrate, serve, ingest, provision devices and tokens, send commands and models."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleet_server import auth, commands, mqtt_accounts
from fleet_server.config import ConfigError, ServerConfig, load
from fleet_server.db import connect
from fleet_server.device_view import PROBLEM_CODES, STATES, choices, device_rows, wanted
from fleet_server.migrate import RESTORED_AHEAD, MigrationError, database_origin, settle_ids
from fleet_server.migrate import migrate as run_migrations
from roadmon_contract import ids, topics
from roadmon_contract.commands import zoned_time
from roadmon_contract.logs import log_in_utc
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)
app = typer.Typer(name="fleet-server", help="road-monitor fleet server.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
device_app = typer.Typer(help="Provision and revoke devices.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for people and programs.", no_args_is_help=True)
cmd_app = typer.Typer(help="Commands to devices.", no_args_is_help=True)
model_app = typer.Typer(help="Remote model updates.", no_args_is_help=True)
app.add_typer(device_app, name="device")
app.add_typer(token_app, name="token")
app.add_typer(cmd_app, name="cmd")
app.add_typer(model_app, name="model")
console = Console(soft_wrap=True)  # paths and tokens in messages stay whole (copy-paste)
err = Console(stderr=True, soft_wrap=True)

# A token's lifetime in days at most: a century is "for ever" for a fleet, and 3,000,000 days overflowed the date.
MAX_TOKEN_DAYS = 36500
ConfigOpt = typer.Option(None, "--config", "-c", envvar="ROADMON_SERVER_CONFIG",
                         help="Server TOML config (defaults when absent; secrets come from files or env)")


class _State:
    cfg: ServerConfig | None = None


state = _State()


@app.callback()
def _root(config: Path | None = ConfigOpt, verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    log_in_utc(logging.DEBUG if verbose else logging.INFO)
    try:
        state.cfg = load(config)
    except ConfigError as exc:
        err.print(f"[red]config {exc.source}:[/red]")
        for problem in exc.problems:
            err.print(f"  {problem}")
        raise typer.Exit(1) from None


def cfg() -> ServerConfig:
    assert state.cfg is not None
    return state.cfg


def _fail(message: str) -> None:
    err.print(f"[red]{message}[/red]")
    raise typer.Exit(1)


def print_table(table: Table) -> None:
    # Piped, a console is 80 columns wide and a table squeezes its cells ("demo-vi…"); a file gets them whole.
    # (Console.print's width cannot exceed the console's own, hence a wider console.) Cells are text as it is:
    # device names and command results come from devices, and Rich markup in them ("[link=...]") must not run.
    width = None if console.is_terminal else 250
    Console(soft_wrap=True, width=width, markup=False, force_terminal=console.is_terminal or None).print(table)


@app.command("migrate")
def migrate_cmd(after_restore: bool = typer.Option(
        False, "--after-restore", help="After restoring a dump of a database older than migration 027 (a newer "
                                       "one is recognised): move defect and token ids past any the lost ones had")
) -> None:
    """Apply pending database migrations, put every id sequence past the ids its table holds, and after a restore
    from a dump move defect and token ids past the lost ones."""
    try:
        dsn = cfg().database.resolve_dsn()
    except ConfigError as exc:
        _fail(str(exc))
    done = _migrate_or_fail(dsn, after_restore)
    console.print(f"applied {len(done)} migration(s)" + (": " + ", ".join(f"{m.version:03d}_{m.name}" for m in done)
                                                          if done else " (schema up to date)"))


def _migrate_or_fail(dsn: str, after_restore: bool = False) -> list:
    timeout_s = cfg().database.connect_timeout_s
    try:
        done = run_migrations(dsn, connect_timeout_s=timeout_s)
        ids = settle_ids(dsn, after_restore, connect_timeout_s=timeout_s)
    except MigrationError as exc:
        _fail(f"migration stopped: {exc}")
        raise
    if after_restore and not ids.restored:
        console.print("this database's tables are the ones it was last migrated with (no restore since, or its ids "
                      "were moved already): ids left as they are", markup=False)
    moved_on = [m for m in ids.moves if ids.restored and m.table in RESTORED_AHEAD]
    for move in moved_on:
        console.print(f"{move.table} ids continue after {move.now} (past any the lost ones had)", markup=False)
    rewound = [m for m in ids.moves if m not in moved_on]
    for move in rewound:
        gave = f"gave ids up to {move.was}" if move.was > 0 else "had given no id"
        err.print(f"warning: {move.sequence} {gave} while {move.table} holds higher ones: moved on to {move.now}",
                  markup=False)
    if rewound:
        err.print("A dump restored into a database that still had its tables does this (pg_restore then reports far "
                  "more than the two harmless errors): events refused meanwhile are in `rejected`, and "
                  "`fleet-server cmd resend --rejected --since ...` asks the boxes for them", markup=False)
    if ids.restored:
        with connect(cfg().database) as conn:
            newest = commands.newest_sighting(conn)
        since = "the dump's time, less a day" if newest is None else utc_iso(newest - timedelta(days=1), "seconds")
        console.print("this database was restored from a dump: once the ingest workers are up (their /health "
                      f"answers 200), `fleet-server cmd resend --since {since}` asks the boxes for what it lost"
                      + ("" if newest is None else f" (its newest sighting was received {utc_iso(newest, 'seconds')})"),
                      markup=False)
    return done


@app.command("partitions")
def partitions_cmd(dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be dropped"),
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """Monthly partitions of sightings and coverage: make the upcoming ones, drop those past [retention]
    (run it daily)."""
    from fleet_server import partitions

    c = cfg()
    with connect(c.database) as conn:
        report = partitions.maintain(conn, c.retention, dry_run=dry_run)
    if as_json:
        print(json.dumps({"created": report.created, "dropped": report.dropped, "dry_run": dry_run,
                          "default_rows_deleted": report.default_rows_deleted, "kept": report.kept,
                          "rows_deleted": report.rows_deleted}))
        return
    console.print(f"{'would create' if dry_run else 'created'} {len(report.created)}: "
                  f"{', '.join(report.created) or '-'}")
    console.print(f"{'would drop' if dry_run else 'dropped'} {len(report.dropped)}: {', '.join(report.dropped) or '-'}")
    for table, n in report.default_rows_deleted.items():
        console.print(f"{'would delete' if dry_run else 'deleted'} {n} rows past retention from {table}'s default "
                      "partition")
    for table, n in report.rows_deleted.items():
        console.print(f"{'would delete' if dry_run else 'deleted'} {n} rows past retention from {table}")
    for name, n in report.kept.items():
        console.print(f"kept {name}: past retention, but {n} of its rows are younger (ids made by a box whose "
                      "clock was behind); its older rows deleted")


def _start_workers(n: int, role: str, first: int = 0) -> list:
    from fleet_server.ingest import IngestWorker

    return [IngestWorker(cfg(), index=first + i, role=role).start() for i in range(n)]


@app.command("serve")
def serve(workers: int = typer.Option(1, "--workers", "-w", min=0, help="Ingest workers in this process"),
          host: str | None = typer.Option(None, help="Listen address (default api.host)"),
          port: int | None = typer.Option(None, help="Port (default api.port)")) -> None:
    """HTTP API plus N ingest workers (one shared-subscription group)."""
    import uvicorn

    from fleet_server.api import create_app

    c = cfg()
    _migrate_or_fail(c.database.resolve_dsn())
    c.metrics.resolve_token()  # a token file that is not there stops the start, not every scrape later
    port = port or c.api.port
    # The port in the client id: a second `serve` started on this host beside the first (a new version on another
    # port) took the first's broker session once a second.
    running = _start_workers(workers, f"serve{port}")
    try:
        # proxy_headers off: the app itself takes X-Forwarded-For from api.trusted_proxies only (create_app).
        # The app stops the workers at its shutdown (see create_app); this is for a start that failed.
        # log_config None: uvicorn's lines (each HTTP access among them) go through the root logger's UTC stamp;
        # its own format had no time at all.
        uvicorn.run(create_app(c, workers=running), host=host or c.api.host, port=port, log_level="info",
                    proxy_headers=False, log_config=None)
    finally:
        for w in running:
            w.stop()


@app.command("ingest")
def ingest(workers: int = typer.Option(1, "--workers", "-w", min=1, help="Workers in this process"),
           instance: int = typer.Option(0, "--instance", envvar="ROADMON_INGEST_INSTANCE", min=0,
                                        help="Number of this process among several on one host (systemd %i), "
                                             "so that MQTT client ids stay unique"),
           metrics_port: int = typer.Option(0, "--metrics-port", envvar="ROADMON_METRICS_PORT", min=0, max=65535,
                                            help="Serve this process's Prometheus metrics (road_ingest_*) on "
                                                 "this port; 0 = off"),
           metrics_port_base: int = typer.Option(0, "--metrics-port-base", min=0, max=65535,
                                                 help="Serve the metrics on this port + --instance (systemd "
                                                      "instances 1, 2, ... get 9101, 9102, ... from 9100); "
                                                      "instead of --metrics-port"),
           metrics_addr: str = typer.Option("0.0.0.0", "--metrics-addr",
                                            help="Address the metrics listen on (127.0.0.1: this host only)")) -> None:
    """Ingest workers only (no HTTP API)."""
    metrics_port = _metrics_port(metrics_port, metrics_port_base, instance)
    running: list = []
    if metrics_port:
        from fleet_server.health import DatabaseProbe, ingest_process_problem
        from fleet_server.metrics_auth import serve_metrics

        cfg().metrics.resolve_token()  # a token file that is not there stops the start, not every scrape later
        database = DatabaseProbe(cfg().database)
        serve_metrics(cfg().metrics, metrics_port, metrics_addr,
                      problem=lambda: ingest_process_problem(running, cfg().ingest.stall_after_s, database))
    running.extend(_start_workers(workers, "ingest", first=instance * workers))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    console.print(f"{workers} ingest worker(s) running; Ctrl-C stops")
    done.wait()
    for w in running:
        w.stop()


def _metrics_port(port: int, base: int, instance: int) -> int:
    """The ingest process's metrics port: PORT, or BASE + INSTANCE (a unit template cannot add numbers)."""
    if port and base:
        _fail("give --metrics-port or --metrics-port-base, not both")
    if not base:
        return port
    if base + instance > 65535:
        _fail(f"--metrics-port-base {base} + --instance {instance} is past the last port, 65535")
    return base + instance


# ------------------------------------------------------------------------------------------- devices
@device_app.command("add")
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
        _fail(f"invalid device id {device_id!r}: {ids.NEW_DEVICE_ID_RULE}")
    c = cfg()
    if mqtt_accounts.reserved(device_id, c.mqtt.username):
        _fail(f"device id {device_id!r} is reserved: {c.mqtt.username!r} and names beginning with "
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
            _fail(f"device {device_id!r} not added: cannot write the broker login to "
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
            _fail(f"no device {device_id!r} to re-issue credentials for: add it without --reissue")
        conn.execute("INSERT INTO devices (id, name) VALUES (%s, %s)", (device_id, name))
        return True
    if row[0] is not None:
        _fail(f"device {device_id!r} is revoked: a revoked id is not given credentials again")
    if not reissue:
        _fail(f"device {device_id!r} already exists: `device add --reissue {device_id}` gives it new credentials "
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
        _fail(f"{file}: not UTF-8 text ({exc})")
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
def device_revoke(device_id: str) -> None:
    """Remove a device's broker login and revoke its tokens (its data stays: `device erase` deletes it)."""
    c = cfg()
    with connect(c.database) as conn, conn.transaction():
        found = conn.execute("UPDATE devices SET revoked_at = now() WHERE id = %s RETURNING id",
                             (device_id,)).fetchone()
        tokens = auth.revoke_tokens(conn, device_id=device_id)
    if found is None:
        _fail(f"no device {device_id!r}")
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
def device_erase(device_id: str,
                 yes: bool = typer.Option(False, "--yes", help="Delete; without it, only say what would go"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Delete everything the server holds about a device (a right-to-erasure request): sightings, tracks, passes,
    command answers, refused messages, tokens and their audit rows, the device, its broker login and the status
    retained at the broker. Defects only it saw are deleted; those others saw too are recounted. Stop the box first
    (a connected box keeps its session until it disconnects)."""
    from fleet_server.erase import erase_device

    if not ids.DEVICE_ID.fullmatch(device_id):
        _fail(f"invalid device id {device_id!r}")
    c = cfg()
    if yes:
        _remove_broker_login(c, device_id)
    try:
        with connect(c.database) as conn:
            erased = erase_device(conn, device_id, c.aggregate, dry_run=not yes)
    except LookupError as exc:
        _fail(str(exc))
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
        _fail(str(exc))
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


# -------------------------------------------------------------------------------------------- tokens
@token_app.command("create")
def token_create(role: str = typer.Option(..., "--role", help="viewer, manager or admin"),
                 name: str = typer.Option(..., "--name", help="Who or what uses it"),
                 days: int | None = typer.Option(None, "--days", min=1, max=MAX_TOKEN_DAYS,
                                                 help="Lifetime; api.user_token_days when not given"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Create an API token; it is printed once (only its hash is stored)."""
    if role not in auth.ROLES:
        _fail(f"unknown role {role!r}: use one of {', '.join(auth.ROLES)}")
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
                _fail(str(exc))
        # The old token keeps its own expiry when that comes before the overlap ends.
        old_until, new_until = (conn.execute("SELECT expires_at FROM api_tokens WHERE id = %s", (i,)).fetchone()[0]
                                for i in (token_id, new_id))
    if as_json:
        print(json.dumps({"id": new_id, "replaces": token_id, "token": token,
                          "replaced_until": utc_iso(old_until, "seconds"),
                          "expires_at": utc_iso(new_until, "seconds") if new_until else None}))
    else:
        console.print(f"token {new_id} replaces {token_id}, which stops working at "
                      f"{old_until.astimezone(UTC):%Y-%m-%d %H:%M} UTC; token {new_id} expires at "
                      f"{_when(new_until)} (shown once):")
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


def _when(t: datetime | None) -> str:
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if t is not None else "never"


@token_app.command("revoke")
def token_revoke(token_id: int) -> None:
    """Revoke a token by its id (see `token ls`)."""
    with connect(cfg().database) as conn:
        n = auth.revoke_tokens(conn, token_id=token_id)
    if not n:
        _fail(f"no active token {token_id}")
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

    def utc(when: datetime | None, none: str = "") -> str:
        return f"{when.astimezone(UTC):%Y-%m-%d %H:%M}" if when else none

    for r in rows:
        expires = utc(r[6], "never") + (" (expired)" if r[6] is not None and r[6] <= now else "")
        table.add_row(str(r[0]), r[1], r[2], r[3] or "", utc(r[4]), utc(r[5]), expires,
                      "" if r[7] is None else str(r[7]))
    print_table(table)


# ------------------------------------------------------------------------------------------ commands
@cmd_app.command("send")
def cmd_send(device_id: str,
             name: str = typer.Argument(..., help=f"One of {', '.join(commands.KNOWN_COMMANDS)}"),
             payload: str = typer.Argument("{}", help="JSON object")) -> None:
    """Publish roadmon/v1/<device>/cmd/<name> with a JSON payload (plus command_id, issued_at, expires_at) to a
    device that exists and is not revoked."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"payload is not JSON: {exc}")
    if not isinstance(body, dict):
        _fail("payload must be a JSON object")
    try:
        sent = commands.send(cfg(), device_id, name, body)
    except commands.CommandError as exc:
        _fail(str(exc))
    console.print(f"sent on {topics.cmd(device_id, name)}: command_id {sent['command_id']}, "
                  f"expires {sent['expires_at']}", markup=False)


@cmd_app.command("resend")
def cmd_resend(since: str | None = typer.Option(None, "--since", help="Send again what the server confirmed from "
                                                "this time on (RFC 3339, e.g. 2026-12-06T02:00:00Z): the backup's "
                                                "time, less a margin for the boxes' clocks"),
               rejected: bool = typer.Option(False, "--rejected", help="Also what the server refused for good"),
               device: list[str] = typer.Option([], "--device", help="Only these devices (repeat); default every "
                                                                      "device not revoked"),
               days: float = typer.Option(7.0, "--days", min=0.01, help="Boxes off longer than this no longer act "
                                                                      "on it (outbox.retention_days: 7)")) -> None:
    """After the database was restored from a backup: every box sends again what the server confirmed since the
    backup (it still keeps it for outbox.retention_days); the server stores each event once. Answers come in
    `cmd results DEVICE`."""
    when = None
    if since is not None:
        try:
            when = zoned_time(since)
        except ValueError as exc:
            _fail(f"--since {exc}")
    c = cfg()
    with contextlib.suppress(psycopg.Error), connect(c.database) as conn:
        if database_origin(conn) == "restored":  # `migrate` (or a `serve` start) has not run since the restore
            err.print("warning: this database was restored from a dump and not migrated since: run `fleet-server "
                      "migrate` first, so that new defects and tokens do not take the ids of lost ones", markup=False)
    try:
        sent, broker_only, no_login, newest = commands.resend(c, when, rejected, device or None,
                                                              expire_after_h=days * 24)
    except commands.CommandError as exc:
        _fail(str(exc))
    console.print(f"cmd/resend sent to {len(sent)} devices; their answers: `fleet-server cmd results DEVICE`",
                  markup=False)
    if when is not None and newest is not None and when > newest:
        # The time of the loss typed for the dump's: the boxes answer "0 rows" and the gap stays, unnoticed.
        err.print(f"warning: --since {utc_iso(when, 'seconds')} is after the newest sighting this database holds "
                  f"(received {utc_iso(newest, 'seconds')}): what the boxes sent between the two does not come back. "
                  f"After a restore, send it again with the dump's time less a day, e.g. --since "
                  f"{utc_iso(newest - timedelta(days=1), 'seconds')} (what the server has is only confirmed again)",
                  markup=False)
    if no_login:
        most = len(no_login) > len(sent) / 2
        why = ("most of the fleet: is the broker's password file older than the database (restored from an old "
               "copy, or rebuilt)? Check it before revoking anyone; devices revoked since the backup are revoked "
               "again with `fleet-server device revoke DEVICE`" if most else
               "revoked since the backup? revoke them again: `fleet-server device revoke DEVICE`; or they log in "
               "with a certificate")
        console.print(f"{len(no_login)} of them the database lists but the broker's password file has no login for "
                      f"({why}): {', '.join(no_login[:10])}" + (" ..." if len(no_login) > 10 else ""), markup=False)
    if broker_only:
        console.print(f"{len(broker_only)} of them only the broker's password file knows (added after the "
                      f"database's backup?): {', '.join(broker_only[:10])}" + (" ..." if len(broker_only) > 10
                                                                                else ""), markup=False)
    if c.broker_files.passwd_file is None:
        console.print("broker_files.passwd_file is not set: devices added after the backup are not in the "
                      "database and were not reached; name them with --device once they sent a status",
                      markup=False)


@cmd_app.command("results")
def cmd_results(device_id: str, limit: int = typer.Option(20, min=1),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """A device's latest command results (stored by the ingest workers)."""
    with connect(cfg().database) as conn:
        if conn.execute("SELECT 1 FROM devices WHERE id = %s", (device_id,)).fetchone() is None:
            _fail(f"no device {device_id!r} (`fleet-server device ls` lists them)")  # an empty table said "none"
        rows = conn.execute("""SELECT received_at, name, payload FROM command_results WHERE device_id = %s
                               ORDER BY received_at DESC, id DESC LIMIT %s""", (device_id, limit)).fetchall()
    if as_json:
        print(json.dumps([{"received_at": utc_iso(r[0], "seconds"), "name": r[1], "payload": r[2]} for r in rows]))
        return
    table = Table("received (UTC)", "command", "result")
    for r in rows:
        table.add_row(f"{r[0]:%Y-%m-%d %H:%M:%S}", r[1], json.dumps(r[2])[:200])
    print_table(table)


@cmd_app.command("summary")
def cmd_summary(name: str = typer.Argument(..., help=f"One of {', '.join(commands.KNOWN_COMMANDS)}"),
                since: str = typer.Option(..., "--since", help="Answers from this time on (RFC 3339): when the "
                                                               "command was sent"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """The fleet's answers to command NAME since a time: how many devices answered, with what status, the rows
    they send again (resend), and the devices not revoked that have not answered yet (off, or still busy). After
    a restore, `cmd results DEVICE` was the only view: one device at a time among thousands."""
    try:
        when = zoned_time(since)
    except ValueError as exc:
        _fail(f"--since {exc}")
    with connect(cfg().database) as conn:
        rows = conn.execute("""
            SELECT DISTINCT ON (device_id) device_id, payload FROM command_results
            WHERE name = %s AND received_at >= %s ORDER BY device_id, received_at DESC, id DESC""",
                            (name, when)).fetchall()
        waiting = [r[0] for r in conn.execute(
            """SELECT id FROM devices d WHERE revoked_at IS NULL AND NOT EXISTS (
                   SELECT 1 FROM command_results c WHERE c.device_id = d.id AND c.name = %s
                                                     AND c.received_at >= %s) ORDER BY id""", (name, when))]
    statuses: dict[str, int] = {}
    for _, payload in rows:
        key = str(payload.get("status") or ("ok" if payload.get("ok") else "failed"))
        statuses[key] = statuses.get(key, 0) + 1
    resent = {k: sum(int(p.get(k) or 0) for _, p in rows if isinstance(p.get(k), int)) for k in ("events", "coverage")}
    summary = {"command": name, "since": utc_iso(when, "seconds"), "answered": len(rows), "statuses": statuses,
               "resent": resent, "not_answered": len(waiting), "not_answered_devices": waiting}
    if as_json:
        print(json.dumps(summary))
        return
    console.print(f"{name} since {summary['since']}: {len(rows)} devices answered "
                  f"({', '.join(f'{v} {k}' for k, v in sorted(statuses.items())) or 'none'})", markup=False)
    if name == "resend":
        console.print(f"rows they send again: {resent['events']} events, {resent['coverage']} coverage records "
                      "(`device ls` shows each box's queue draining)", markup=False)
    console.print(f"{len(waiting)} devices not revoked have not answered yet" +
                  (f": {', '.join(waiting[:10])}" + (" ..." if len(waiting) > 10 else "") if waiting else ""),
                  markup=False)


@model_app.command("push")
def model_push(device_id: str, file: Path = typer.Argument(..., exists=True, dir_okay=False),
               url_base: str | None = typer.Option(None, "--url-base", help="Public base URL of this server"),
               name: str | None = typer.Option(None), version: str | None = typer.Option(None),
               signature_file: Path | None = typer.Option(
                   None, "--signature-file", exists=True, dir_okay=False,
                   help="Base64 Ed25519 signature of FILE (openssl pkeyutl -sign -rawin ... | base64 -w0)")) -> None:
    """Offer an ONNX model to a device that exists and is not revoked: check and stage the file by sha256,
    publish cmd/model-update with a download link signed for that device (valid until the command expires)."""
    signature = signature_file.read_text().strip() if signature_file else None
    try:
        payload = commands.push_model(cfg(), device_id, file, url_base, name, version, signature)
    except commands.CommandError as exc:
        _fail(str(exc))
    console.print(f"model-update sent to {device_id}: {json.dumps(payload)}", markup=False)
    if payload["url"].startswith("http://"):
        err.print("note: the link is plain http://; agents refuse it unless their model_update.allow_http is on "
                  "(lab only): set models.url_base to the API's https address", markup=False)


class ReaderMayLeave:
    """stdout for `device ls | head -1`: once the reader has gone, the rest of the output is dropped and the command
    ends as it would have (click turned the broken pipe into exit 1 without a word, which a `set -o pipefail` cron
    job read as "could not"). stdout then points at /dev/null, so the interpreter's last flush does not fail."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._reader_left()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_left()

    def _reader_left(self) -> None:
        self._gone = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main() -> None:
    # What an operator gets wrong at start (a DSN file that is not there, a wrong password, PostgreSQL down, a
    # database without PostGIS) is one line, not psycopg's traceback.
    sys.stdout = ReaderMayLeave(sys.stdout)
    try:
        app()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        sys.exit(1)
    except psycopg.OperationalError as exc:
        err.print(f"[red]cannot use the database: {_first_line(exc)}[/red]", highlight=False)
        sys.exit(1)
    except psycopg.Error as exc:
        err.print(f"[red]the database refused: {_first_line(exc)}[/red]", highlight=False)
        sys.exit(1)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        err.print(f"[red]cannot start:{where}: {exc.strerror or exc}[/red]", highlight=False)
        sys.exit(1)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
