"""`edge-agent queue ls|stats|retry|purge --confirmed|export --geojson OUT`: look into the outbox and act on it.

Safe while the agent runs: SQLite's WAL lets this process read and make small changes beside it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

queue_app = typer.Typer(help="Inspect and manage the outbox (the store-and-forward queue).", no_args_is_help=True)
out = Console()
err = Console(stderr=True, soft_wrap=True)

DEFAULT_CONFIG = "/etc/edge-agent/agent.toml"
CONFIG_OPTION = typer.Option(os.environ.get("EDGE_AGENT_CONFIG", DEFAULT_CONFIG), "--config", "-c",
                             help="Agent config file (env EDGE_AGENT_CONFIG); says where the outbox is")
OUTBOX_OPTION = typer.Option(None, "--outbox", help="Outbox file; overrides the one the config names")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table")


def resolve_paths(config: str, outbox: Path | None) -> tuple[Path, Any]:
    """(outbox file, agent config or None). Exits 2 with a clear message when neither can be found."""
    from edge_agent import config as agent_config

    cfg = None
    if outbox is None or Path(config).exists():
        try:
            cfg = agent_config.load(config)
        except agent_config.ConfigError as exc:
            if outbox is None:
                err.print(f"[red]{exc}[/red]\n(pass --outbox PATH to read a queue file directly)")
                raise typer.Exit(2) from None
    if outbox is None:
        outbox = cfg.outbox_path
    return outbox, cfg


def open_outbox(config: str, outbox: Path | None):  # -> Outbox
    from edge_agent.link.outbox import Outbox

    path, cfg = resolve_paths(config, outbox)
    if not path.exists():
        err.print(f"[red]no outbox at {path}[/red] (the agent creates it on its first start)")
        raise typer.Exit(2)
    try:
        return Outbox(path, cfg.outbox if cfg else None, agent=False)
    except (sqlite3.DatabaseError, RuntimeError) as exc:
        err.print(f"[red]cannot read the outbox {path}: {exc}[/red] (a damaged queue is moved aside by the agent "
                  "at its next start; copy it off the box first)")
        raise typer.Exit(1) from None


def stats_table(stats: dict[str, Any]) -> Table:
    table = Table(title=f"outbox {stats['path']}", show_header=True)
    table.add_column("")
    for state in ("pending", "sent", "confirmed"):
        table.add_column(state, justify="right")
    for kind in ("events", "coverage"):
        table.add_row(kind, *(str(stats[kind][s]) for s in ("pending", "sent", "confirmed")))
    return table


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
    out.print(f"disk: outbox {stats['db_mb']:.1f} MB of {stats['budget_mb']:.0f} MB budget, "
              f"{stats['disk_free_mb']:.0f} MB free" + ("  [red]limit reached[/red]" if stats["disk_tight"] else ""))
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "none"
    out.print(f"dropped/refused: {dropped}")


@queue_app.command("ls")
def ls_cmd(
    config: str = CONFIG_OPTION,
    outbox: Path | None = OUTBOX_OPTION,
    state: str | None = typer.Option(None, "--state", help="Only rows in this state: pending, sent, confirmed"),
    kind: str = typer.Option("event", "--kind", help="event or coverage"),
    limit: int = typer.Option(50, "--limit", min=1, help="Most rows shown"),
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
    table = Table(title=f"{kind} rows" + (f" ({state})" if state else ""))
    columns = ["id", "state", "priority", "attempts", "created_at", "confirmed_at"]
    if kind == "event":
        columns[1:1] = ["seq"]
        columns += ["thumbnail"]
    if any(row.get("rejected") for row in rows):
        columns += ["rejected"]
    for col in columns:
        # Ids are what a technician copies into a server query: never cut them short.
        table.add_column(col, no_wrap=col in ("id", "created_at", "confirmed_at"),
                         min_width=36 if col == "id" else None)
    for row in rows:
        row["thumbnail"] = "yes" if row.get("has_thumbnail") else "-"
        table.add_row(*("-" if row.get(c) is None else str(row.get(c)) for c in columns))
    out.print(table)


@queue_app.command("retry")
def retry_cmd(config: str = CONFIG_OPTION, outbox: Path | None = OUTBOX_OPTION) -> None:
    """Make every unconfirmed row due now (the running agent sends them at its next step)."""
    with open_outbox(config, outbox) as ob:
        n = ob.retry()
    out.print(f"{n} unconfirmed rows are due now")


@queue_app.command("purge")
def purge_cmd(
    config: str = CONFIG_OPTION,
    outbox: Path | None = OUTBOX_OPTION,
    confirmed: bool = typer.Option(False, "--confirmed", help="Delete the rows the server has confirmed"),
) -> None:
    """Delete confirmed rows (they are on the server). Unconfirmed rows are never purged."""
    if not confirmed:
        err.print("[red]nothing to purge: pass --confirmed (unconfirmed rows are never deleted)[/red]")
        raise typer.Exit(2)
    with open_outbox(config, outbox) as ob:
        n = ob.purge_confirmed()
    out.print(f"deleted {n} confirmed rows")


@queue_app.command("export")
def export_cmd(
    geojson: Path = typer.Option(..., "--geojson", help="Write a GeoJSON FeatureCollection here ('-' = stdout)"),
    config: str = CONFIG_OPTION,
    outbox: Path | None = OUTBOX_OPTION,
) -> None:
    """Every event as a GeoJSON Point (the defect's position) with the event's fields and queue state."""
    with open_outbox(config, outbox) as ob:
        collection = events_geojson(ob.iter_events())
    text = json.dumps(collection, indent=1)
    if str(geojson) == "-":
        typer.echo(text)
        return
    geojson.write_text(text + "\n", encoding="utf-8")
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
