"""`fleet-server`: migrate, serve, ingest, provision devices and tokens."""

from __future__ import annotations

import typer

app = typer.Typer(name="fleet-server", help="road-monitor fleet server.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    pass


def main() -> None:
    app()
