"""`edge-agent gps ...` (stub: filled in by its issue)."""

from __future__ import annotations

import typer

gps_app = typer.Typer(help="gps commands.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(gps_app, name="gps")
