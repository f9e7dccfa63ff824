"""`edge-agent queue ls|stats|retry|purge --confirmed|--rejected|export --geojson OUT`: look into the outbox and act
on it.

Safe while the agent runs: SQLite's WAL lets this process read and make small changes beside it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from edge_agent.commands import config_option
from roadmon_contract.commands import zoned_time

if TYPE_CHECKING:  # at run time resolve_paths imports the config itself, when a command needs it
    from edge_agent.config import AgentConfig

queue_app = typer.Typer(help="Inspect and manage the outbox (the store-and-forward queue).", no_args_is_help=True)
out = Console()
err = Console(stderr=True, soft_wrap=True)

CONFIG_OPTION = config_option(help="Agent config file; says where the outbox is")
OUTBOX_OPTION = typer.Option(None, "--outbox", help="Outbox file; overrides the one the config names")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table")
# More rows than any outbox holds within a disk budget (coverage rows are a few hundred bytes), and far below
# SQLite's 64-bit LIMIT: a bigger --limit was an OverflowError from deep inside the query, not "show all".
MAX_LIST_ROWS = 10_000_000


def resolve_paths(config: str, outbox: Path | None) -> tuple[Path, AgentConfig | None]:
    """(outbox file, agent config or None). Exits 2 with a clear message when neither can be found."""
    from edge_agent import config as agent_config

    if outbox is not None:  # the config is optional then: used when it is there and loads
        if not Path(config).exists():
            return outbox, None
        try:
            return outbox, agent_config.load(config)
        except agent_config.ConfigError:
            return outbox, None
    try:
        cfg = agent_config.load(config)
    except agent_config.ConfigError as exc:
        err.print(f"[red]{exc}[/red]\n(pass --config FILE or set $EDGE_AGENT_CONFIG for another box's "
                  "config, or --outbox PATH to read a queue file directly)")
        raise typer.Exit(2) from None
    return cfg.outbox_path, cfg


def fail(message: str, hint: str = "", code: int = 1) -> NoReturn:
    """One line saying what went wrong (and one with what to do), then exit CODE."""
    err.print(f"[red]{message}[/red]", highlight=False)
    if hint:
        err.print(f"hint: {hint}", markup=False, highlight=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def open_outbox(config: str, outbox: Path | None, *, read_only: bool = True) -> Iterator[Any]:  # -> Outbox
    """The outbox, opened read-only unless the command changes it (a reader then works on a read-only disk
    and never writes beside a running agent). The disk refusing, or a damaged file, ends the command with one
    line: a refusal inside the block too (a full disk refusing a purge)."""
    from edge_agent.link.outbox import Outbox
    from edge_agent.link.outbox_file import OutboxUnavailable, disk_refusal, disk_trouble

    path, cfg = resolve_paths(config, outbox)
    if not path.exists():
        fail(f"no outbox at {path} (the agent creates it on its first start)", code=2)
    try:
        with Outbox(path, cfg.outbox if cfg else None, agent=False, read_only=read_only) as ob:
            yield ob
    except typer.Exit:  # a command's own clear error (click's Exit is a RuntimeError too)
        raise
    except OutboxUnavailable as exc:
        fail(f"cannot open {path}: {exc}", exc.hint)
    except sqlite3.DatabaseError as exc:
        if disk_trouble(exc):
            refusal = disk_refusal(path, exc)
            fail(f"the disk refused: {refusal}", refusal.hint)
        fail(f"cannot read the outbox {path}: {exc} (a damaged queue is moved aside by the agent at its next "
             "start; copy it off the box first)")
    except RuntimeError as exc:  # a schema newer than this agent
        fail(f"cannot read the outbox {path}: {exc}")


def stats_table(stats: dict[str, Any]) -> Table:
    from edge_agent.link.outbox import STATES

    table = Table(title=f"outbox {stats['path']}", show_header=True)
    table.add_column("")
    for state in STATES:
        table.add_column(state, justify="right", style="yellow" if state == "rejected" and stats["rejected"] else None)
    for kind in ("events", "coverage"):
        table.add_row(kind, *(str(stats[kind][s]) for s in STATES))
    return table


def rejected_line(count: int) -> str:
    """One line on the rows the server refused for good, saying where to read why ('' when none)."""
    if not count:
        return ""
    return (f"[yellow]{count} rows rejected by the server[/yellow] (never sent again; why: "
            "`edge-agent queue ls --state rejected --json`)")


@queue_app.command("stats")
def stats_cmd(config: str = CONFIG_OPTION, outbox: Path | None = OUTBOX_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Rows by state, oldest pending, last confirmed, disk use and what the disk guard refused."""
    with open_outbox(config, outbox) as ob:
        stats = ob.stats()
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    out.print(stats_table(stats))
    out.print(f"queue depth {stats['queue_depth']}, oldest pending {stats['oldest_pending_at'] or '-'}, "
              f"last confirmed {stats['last_confirmed_at'] or '-'}")
    if stats["rejected"]:
        out.print(rejected_line(stats["rejected"]), highlight=False)
    out.print(f"disk: outbox {stats['db_mb']:.1f} MB of {stats['budget_mb']:.0f} MB budget, "
              f"{stats['disk_free_mb']:.0f} MB free" + ("  [red]limit reached[/red]" if stats["disk_tight"] else ""))
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "none"
    out.print(f"dropped/refused: {dropped}")


@queue_app.command("ls")
def ls_cmd(
    config: str = CONFIG_OPTION,
    outbox: Path | None = OUTBOX_OPTION,
    state: str | None = typer.Option(None, "--state",
                                     help="Only rows in this state: pending, sent, confirmed, rejected"),
    kind: str = typer.Option("event", "--kind", help="event or coverage"),
    limit: int = typer.Option(50, "--limit", min=1, max=MAX_LIST_ROWS, help="Most rows shown"),
    as_json: bool = JSON_OPTION,
) -> None:
    """List rows in send order (unconfirmed first: highest priority, then oldest)."""
    from edge_agent.link.outbox import KINDS, STATES

    if state is not None and state not in STATES:
        err.print(f"[red]--state must be one of {', '.join(STATES)}[/red]")
        raise typer.Exit(2)
    if kind not in KINDS:
        err.print(f"[red]--kind must be one of {', '.join(KINDS)}[/red]")
        raise typer.Exit(2)
    with open_outbox(config, outbox) as ob:
        rows = ob.rows(kind, state, limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    out.print(rows_table(rows, kind, state))
    rejected = sum(1 for row in rows if row["state"] == "rejected")
    if rejected:
        out.print(f"{rejected} rejected by the server (dead letters): --json shows why")


# (header, key, fits in): short columns never wrap, so an 80-column terminal shows every row on one line
# with the id whole (what a technician copies into a server query). --json has every field.
LS_COLUMNS = (("id", "id", 36), ("seq", "seq", 6), ("state", "state", 9), ("pri", "priority", 3),
              ("try", "attempts", 3), ("created (UTC)", "created_at", 14), ("img", "thumbnail", 3))


def rows_table(rows: list[dict[str, Any]], kind: str, state: str | None) -> Table:
    columns = [c for c in LS_COLUMNS if kind == "event" or c[1] not in ("seq", "thumbnail")]
    table = Table(title=f"{kind} rows" + (f" ({state})" if state else ""), box=None, padding=(0, 1, 0, 0),
                  header_style="bold")
    for header, _, width in columns:
        table.add_column(header, no_wrap=True, min_width=min(width, len(header)), overflow="ellipsis")
    for row in rows:
        shown = dict(row, thumbnail="yes" if row.get("has_thumbnail") else "-",
                     created_at=_short_time(row.get("created_at")))
        table.add_row(*("-" if shown.get(key) is None else str(shown[key]) for _, key, _ in columns))
    return table


def _short_time(stamp: str | None) -> str | None:
    """'2026-11-28T09:00:01.123Z' -> '11-28 09:00:01': the year and milliseconds cost a column."""
    return f"{stamp[5:10]} {stamp[11:19]}" if stamp and len(stamp) >= 19 else stamp


@queue_app.command("retry")
def retry_cmd(
    config: str = CONFIG_OPTION,
    outbox: Path | None = OUTBOX_OPTION,
    confirmed_since: str | None = typer.Option(
        None, "--confirmed-since", help="Also send again what the server confirmed from this time on (RFC 3339, "
                                        "this box's clock): the server's database was restored from a backup"),
    rejected: bool = typer.Option(False, "--rejected", help="Also send again what the server refused for good "
                                                             "(a fault of the server's, fixed since)"),
) -> None:
    """Make every unconfirmed row due now (the running agent sends them at its next step); with --confirmed-since
    or --rejected, rows the server confirmed or refused go back in the queue too (`fleet-server cmd resend` asks
    every box at once)."""
    since = None
    if confirmed_since is not None:
        try:
            since = zoned_time(confirmed_since)
        except ValueError:
            err.print(f"[red]--confirmed-since {confirmed_since!r}: give an RFC 3339 time with its zone "
                      "(2026-12-06T02:00:00Z)[/red]")
            raise typer.Exit(2) from None
    with open_outbox(config, outbox, read_only=False) as ob:
        again = ob.resend(since, rejected)
        n = ob.retry()
    if since is not None or rejected:
        out.print(f"{again['event']} events and {again['coverage']} coverage records go to the server again")
    out.print(f"{n} unconfirmed rows are due now")


@queue_app.command("purge")
def purge_cmd(
    config: str = CONFIG_OPTION,
    outbox: Path | None = OUTBOX_OPTION,
    confirmed: bool = typer.Option(False, "--confirmed", help="Delete the rows the server has confirmed"),
    rejected: bool = typer.Option(False, "--rejected",
                                  help="Delete the rows the server rejected for good, and their reasons"),
) -> None:
    """Delete confirmed rows (they are on the server) and/or rejected ones. Unconfirmed rows are never purged."""
    if not (confirmed or rejected):
        err.print("[red]nothing to purge: pass --confirmed and/or --rejected (unconfirmed rows are never "
                  "deleted)[/red]")
        raise typer.Exit(2)
    from edge_agent.link.outbox_file import disk_refusal, disk_trouble

    with open_outbox(config, outbox, read_only=False) as ob:
        try:
            n = ob.purge_confirmed() if confirmed else 0
            n_rejected = ob.purge_rejected() if rejected else 0
        except sqlite3.OperationalError as exc:
            if not disk_trouble(exc):
                raise
            refusal = disk_refusal(ob.path, exc)
            # The usual reason to purge is a full disk, and there even a deletion needs room: SQLite writes
            # the change to its journal (the WAL) before it frees anything.
            fail(f"nothing deleted: {refusal}; SQLite needs a little free space even to delete rows",
                 "free a few MB elsewhere (old logs: `journalctl --vacuum-size=100M`) and purge again; a "
                 "running agent also drops confirmed rows by itself when over its limits")
    parts = ([f"{n} confirmed rows"] if confirmed else []) + ([f"{n_rejected} rejected rows"] if rejected else [])
    out.print("deleted " + " and ".join(parts))


@queue_app.command("export")
def export_cmd(
    geojson: Path = typer.Option(..., "--geojson", help="Write a GeoJSON FeatureCollection here ('-' = stdout)"),
    config: str = CONFIG_OPTION,
    outbox: Path | None = OUTBOX_OPTION,
) -> None:
    """Every event as a GeoJSON Point (the defect's position) with the event's fields and queue state."""
    to_stdout = str(geojson) == "-"
    if not to_stdout and not geojson.parent.is_dir():  # found out before reading the whole queue
        raise typer.BadParameter(f"folder {geojson.parent} does not exist", param_hint="'--geojson'")
    with open_outbox(config, outbox) as ob:
        collection = events_geojson(ob.iter_events())
    text = json.dumps(collection, indent=1)
    if to_stdout:
        typer.echo(text)
        return
    try:
        geojson.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {geojson}: {exc.strerror or exc}")
    err.print(f"wrote {len(collection['features'])} events to {geojson}")


def events_geojson(events) -> dict[str, Any]:
    features = []
    for state, event in events:
        pos = event.get("position") or {}
        if not isinstance(pos.get("lat"), int | float) or not isinstance(pos.get("lon"), int | float):
            continue  # an event without a position cannot be a Point
        props = {k: v for k, v in event.items() if k != "position"}
        props["h_accuracy_m"] = pos.get("h_accuracy_m")
        props["queue_state"] = state
        features.append({"type": "Feature", "id": event.get("event_id"),
                         "geometry": {"type": "Point", "coordinates": [pos["lon"], pos["lat"]]},
                         "properties": props})
    return {"type": "FeatureCollection", "features": features}


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")
