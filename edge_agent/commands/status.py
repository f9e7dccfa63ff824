"""`edge-agent status [--json]`: what the box is doing, from the outbox and the agent's status file.

The running agent's uplink rewrites <state_dir>/agent-status.json on every heartbeat and every broker state
change; the queue figures are read from the outbox itself, so they are current even when the agent is down.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from edge_agent.commands.queue import CONFIG_OPTION, JSON_OPTION, OUTBOX_OPTION, open_outbox, resolve_paths
from edge_agent.link.heartbeat import age_s

out = Console()


def _ago(stamp: str | None) -> str:
    age = age_s(stamp)
    if age is None:
        return "-"
    if age < 120:
        text = f"{age:.0f} s ago"
    elif age < 7200:
        text = f"{age / 60:.0f} min ago"
    else:
        text = f"{age / 3600:.1f} h ago"
    return f"{stamp} ({text})"


def collect(config: str, outbox: Path | None) -> dict[str, Any]:
    from edge_agent.link.heartbeat import read_status_file

    path, cfg = resolve_paths(config, outbox)
    status_name = Path(cfg.uplink.status_file if cfg else "agent-status.json")
    status_path = status_name if status_name.is_absolute() else path.parent / status_name
    agent = read_status_file(status_path)
    heartbeat_s = cfg.uplink.heartbeat_s if cfg else 30.0
    with open_outbox(config, outbox) as ob:
        stats = ob.stats()
    broker = "unknown (no status file: is the agent running?)"
    if agent is None and status_path.exists():  # the agent replaces it atomically: damage means the disk
        broker = f"unknown (the status file {status_path} cannot be read: check the disk, or delete it)"
    if agent:
        broker = (agent.get("health") or {}).get("broker") or agent.get("state", "unknown")
        age = age_s(agent.get("sent_at"))
        if broker != "stopped" and age is not None and age > 3 * heartbeat_s:
            broker = f"{broker} (stale: status is {age:.0f} s old; is the agent running?)"
    return {
        "broker": broker,
        "queue_depth": stats["queue_depth"],
        "oldest_pending_at": stats["oldest_pending_at"],
        "last_confirmed_at": stats["last_confirmed_at"],
        "last_fix": (agent or {}).get("fix"),
        "fps": (agent or {}).get("fps"),
        "health": (agent or {}).get("health"),
        "status_at": (agent or {}).get("sent_at"),
        "disk_free_mb": stats["disk_free_mb"],
        "outbox_mb": stats["db_mb"],
        "budget_mb": stats["budget_mb"],
        "dropped": stats["dropped"] | ((agent or {}).get("dropped") or {}),
        "events": stats["events"],
        "coverage": stats["coverage"],
        "outbox": stats["path"],
        "status_file": str(status_path),
    }


def status(config: str = CONFIG_OPTION, outbox: Path | None = OUTBOX_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Queue depth, oldest pending, last confirmed, last fix and broker state."""
    info = collect(config, outbox)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title="edge-agent status", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    broker = info["broker"]
    style = "green" if broker == "connected" else "yellow" if broker in ("connecting", "stopped") else "red"
    fix = info["last_fix"]
    fix_text = "-" if not fix else ", ".join(f"{k} {v}" for k, v in fix.items() if v is not None)
    rows = [
        ("broker", f"[{style}]{broker}[/{style}]"),
        ("queue depth", f"{info['queue_depth']} unconfirmed "
                        f"(events {info['events']['pending']} pending / {info['events']['sent']} sent, "
                        f"coverage {info['coverage']['pending'] + info['coverage']['sent']})"),
        ("oldest pending", _ago(info["oldest_pending_at"])),
        ("last confirmed", _ago(info["last_confirmed_at"])),
        ("last fix", fix_text),
        ("fps", "-" if info["fps"] is None else f"{info['fps']:.1f}"),
        ("disk", f"outbox {info['outbox_mb']:.1f} MB of {info['budget_mb']:.0f} MB, "
                 f"{info['disk_free_mb']:.0f} MB free"),
        ("dropped", ", ".join(f"{k} {v}" for k, v in info["dropped"].items()) or "none"),
        ("status from", _ago(info["status_at"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
