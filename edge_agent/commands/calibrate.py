"""`edge-agent calibrate ...` (stub: filled in by its issue)."""

from __future__ import annotations

import typer

calibrate_app = typer.Typer(help="calibrate commands.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(calibrate_app, name="calibrate")
