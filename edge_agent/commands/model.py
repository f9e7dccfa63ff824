"""`edge-agent model ...` (stub: filled in by its issue)."""

from __future__ import annotations

import typer

model_app = typer.Typer(help="model commands.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
