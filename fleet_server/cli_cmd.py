"""`fleet-server cmd` and `model`: commands and models sent to devices."""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import timedelta
from pathlib import Path

import psycopg
import typer
from rich.table import Table

from fleet_server import commands
from fleet_server.cli_audit import audited
from fleet_server.cli_common import cfg, console, err, fail, print_table
from fleet_server.db import connect
from fleet_server.migrate import database_origin
from roadmon_contract import topics
from roadmon_contract.commands import zoned_time
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)
cmd_app = typer.Typer(help="Commands to devices.", no_args_is_help=True)
model_app = typer.Typer(help="Remote model updates.", no_args_is_help=True)


@cmd_app.command("send")
@audited
def cmd_send(device_id: str,
             name: str = typer.Argument(..., help=f"One of {', '.join(commands.KNOWN_COMMANDS)}"),
             payload: str = typer.Argument("{}", help="JSON object")) -> None:
    """Publish roadmon/v1/<device>/cmd/<name> with a JSON payload (plus command_id, issued_at, expires_at) to a
    device that exists and is not revoked."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"payload is not JSON: {exc}")
    if not isinstance(body, dict):
        fail("payload must be a JSON object")
    try:
        sent = commands.send(cfg(), device_id, name, body)
    except commands.CommandError as exc:
        fail(str(exc))
    console.print(f"sent on {topics.cmd(device_id, name)}: command_id {sent['command_id']}, "
                  f"expires {sent['expires_at']}", markup=False)


@cmd_app.command("resend")
@audited
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
            fail(f"--since {exc}")
    c = cfg()
    with contextlib.suppress(psycopg.Error), connect(c.database) as conn:
        if database_origin(conn) == "restored":  # `migrate` (or a `serve` start) has not run since the restore
            err.print("warning: this database was restored from a dump and not migrated since: run `fleet-server "
                      "migrate` first, so that new defects and tokens do not take the ids of lost ones", markup=False)
    try:
        sent, broker_only, no_login, newest = commands.resend(c, when, rejected, device or None,
                                                              expire_after_h=days * 24)
    except commands.CommandError as exc:
        fail(str(exc))
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
            fail(f"no device {device_id!r} (`fleet-server device ls` lists them)")  # an empty table said "none"
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
        fail(f"--since {exc}")
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
@audited
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
        fail(str(exc))
    console.print(f"model-update sent to {device_id}: {json.dumps(payload)}", markup=False)
    if payload["url"].startswith("http://"):
        err.print("note: the link is plain http://; agents refuse it unless their model_update.allow_http is on "
                  "(lab only): set models.url_base to the API's https address", markup=False)
