"""`edge-agent queue ...` (stub: filled in by its issue)."""

from __future__ import annotations

import typer

queue_app = typer.Typer(help="queue commands.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")
