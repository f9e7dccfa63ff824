"""`edge-agent sim ...` (stub: filled in by its issue)."""

from __future__ import annotations

import typer

sim_app = typer.Typer(help="sim commands.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")
