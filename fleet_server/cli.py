"""`fleet-server`: migrate, serve, ingest, partitions; the device, token, cmd and model commands are in cli_device,
cli_token and cli_cmd."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path

import psycopg
import typer

from fleet_server import commands
from fleet_server.cli_cmd import cmd_app, model_app
from fleet_server.cli_common import cfg, console, err, fail, state
from fleet_server.cli_device import device_app
from fleet_server.cli_token import token_app
from fleet_server.config import ConfigError, load
from fleet_server.db import connect
from fleet_server.migrate import RESTORED_AHEAD, MigrationError, settle_ids
from fleet_server.migrate import migrate as run_migrations
from roadmon_contract.logs import log_in_utc
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)
app = typer.Typer(name="fleet-server", help="road-monitor fleet server.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(device_app, name="device")
app.add_typer(token_app, name="token")
app.add_typer(cmd_app, name="cmd")
app.add_typer(model_app, name="model")
ConfigOpt = typer.Option(None, "--config", "-c", envvar="ROADMON_SERVER_CONFIG",
                         help="Server TOML config (defaults when absent; secrets come from files or env)")


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
        fail(str(exc))
    done = _migrate_orfail(dsn, after_restore)
    console.print(f"applied {len(done)} migration(s)" + (": " + ", ".join(f"{m.version:03d}_{m.name}" for m in done)
                                                          if done else " (schema up to date)"))


def _migrate_orfail(dsn: str, after_restore: bool = False) -> list:
    timeout_s = cfg().database.connect_timeout_s
    try:
        done = run_migrations(dsn, connect_timeout_s=timeout_s)
        ids = settle_ids(dsn, after_restore, connect_timeout_s=timeout_s)
    except MigrationError as exc:
        fail(f"migration stopped: {exc}")
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
    _migrate_orfail(c.database.resolve_dsn())
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
        fail("give --metrics-port or --metrics-port-base, not both")
    if not base:
        return port
    if base + instance > 65535:
        fail(f"--metrics-port-base {base} + --instance {instance} is past the last port, 65535")
    return base + instance




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
