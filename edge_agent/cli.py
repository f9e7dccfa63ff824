"""`edge-agent`: the technician's command line. Each command group lives in edge_agent/commands/."""

from __future__ import annotations

import logging
import os
import sys

import typer

from edge_agent.commands import calibrate, config, doctor, gps, model, queue, run, sim, status
from roadmon_contract.logs import log_in_utc

app = typer.Typer(
    name="edge-agent",
    help="road-monitor vehicle agent: detect road damage, geolocate it, store and forward it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for module in (config, gps, model, sim, calibrate, run, queue, status, doctor):
    module.register(app)


def _version(shown: bool) -> None:
    if shown:  # a technician asked which release a box runs: neither --version nor status said it
        from edge_agent import __version__

        typer.echo(f"edge-agent {__version__}")
        raise typer.Exit()


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level"),
          _shown: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit")) -> None:
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("EDGE_AGENT_LOG", "INFO").upper())
    log_in_utc(level)


def main() -> None:
    if not sys.stderr.isatty():
        # A log, a pipe, a script: usage errors as click's plain "Error: ..." line, not a panel wrapped at 80 columns.
        app.rich_markup_mode = None
    app()
