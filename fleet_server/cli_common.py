"""What every `fleet-server` command shares: the config the root callback loaded, the consoles, one way to fail."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from fleet_server.config import ServerConfig

console = Console(soft_wrap=True)  # paths and tokens in messages stay whole (copy-paste)
err = Console(stderr=True, soft_wrap=True)


class _State:
    cfg: ServerConfig | None = None


state = _State()


def cfg() -> ServerConfig:
    assert state.cfg is not None
    return state.cfg


def fail(message: str) -> None:
    err.print(f"[red]{message}[/red]")
    raise typer.Exit(1)


def print_table(table: Table) -> None:
    # Piped, a console is 80 columns wide and a table squeezes its cells ("demo-vi…"); a file gets them whole.
    # (Console.print's width cannot exceed the console's own, hence a wider console.) Cells are text as it is:
    # device names and command results come from devices, and Rich markup in them ("[link=...]") must not run.
    width = None if console.is_terminal else 250
    Console(soft_wrap=True, width=width, markup=False, force_terminal=console.is_terminal or None).print(table)
