"""`edge-agent doctor [--config C] [--json] [--only camera,gnss]`: check every part of the box and explain."""

from __future__ import annotations

import json
import os
from typing import Any

import typer

from edge_agent.commands import config_option, finite

# Where install.sh keeps the files that the unit's LoadCredential= hands to the service; doctor runs outside
# the unit, so it looks there itself (readable by root only).
INSTALLED_CREDENTIALS = "/etc/edge-agent/credentials"
STYLE = {"green": "bold green", "yellow": "bold yellow", "red": "bold red", "skipped": "dim"}
MARK = {"green": "OK", "yellow": "WARN", "red": "FAIL", "skipped": "SKIP"}
# A receiver sends an epoch a second and a camera many frames a second: a minute is plenty for either to
# answer, and a longer wait only keeps doctor from answering (--gnss-seconds inf never returned).
MAX_LISTEN_S = 60.0


def doctor(
    config: str = config_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table"),
    only: str = typer.Option("", "--only", help="Comma-separated checks to run: config,camera,calibration,gnss,"
                                                "clock,model,outbox,broker,agent,delivery (config always runs)"),
    # Under a tenth of a second no camera or receiver can answer: the check would be red for nothing.
    camera_seconds: float = typer.Option(3.0, min=0.1, max=MAX_LISTEN_S, callback=finite,
                                         help="Longest time spent reading camera frames"),
    gnss_seconds: float = typer.Option(5.0, min=0.1, max=MAX_LISTEN_S, callback=finite,
                                       help="Longest time spent listening to the GNSS receiver"),
) -> None:
    """Check config, camera, calibration, GNSS, clock, model, outbox, broker, the running agent and delivery to
    the server; exit 1 when anything is red."""
    from rich.console import Console
    from rich.table import Table

    from edge_agent.doctor import Level, run_checks
    from edge_agent.doctor.result import Options

    console = Console(stderr=as_json)
    if "CREDENTIALS_DIRECTORY" not in os.environ and os.access(INSTALLED_CREDENTIALS, os.R_OK | os.X_OK):
        os.environ["CREDENTIALS_DIRECTORY"] = INSTALLED_CREDENTIALS
    names = [n.strip() for n in only.split(",") if n.strip()] or None
    options = Options(camera_seconds=camera_seconds, gnss_seconds=gnss_seconds)
    try:
        with console.status("checking...") as status:
            results = run_checks(config, names, options, progress=lambda n: status.update(f"checking {n}..."))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    failed = any(r.level is Level.RED for r in results)

    if as_json:
        typer.echo(json.dumps({"ok": not failed, "config": config, "checks": [r.as_dict() for r in results]},
                              indent=2, default=str))
    else:
        _print_verdict(console, results)
        table = Table(title=f"edge-agent doctor ({config})", show_lines=True, expand=True)
        table.add_column("check", style="bold", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("result", ratio=3)
        table.add_column("what it means / what to do", ratio=3)
        for r in results:
            advice = "\n".join(x for x in (r.explanation, f"[bold]hint:[/bold] {r.hint}" if r.hint else "") if x)
            table.add_row(r.name, f"[{STYLE[r.level.value]}]{MARK[r.level.value]}[/]", r.summary, advice)
        console.print(table)
        counts = {lv: sum(r.level is lv for r in results) for lv in Level}
        console.print(f"{counts[Level.GREEN]} ok, {counts[Level.YELLOW]} warnings, {counts[Level.RED]} failed, "
                      f"{counts[Level.SKIPPED]} skipped")
    if failed:
        raise typer.Exit(1)


def _print_verdict(console: Any, results: list) -> None:
    """The failures first, each with what to do: in check order a quiet box's reason was the 8th of 10 rows, and
    the last line only a tally."""
    from rich.markup import escape

    from edge_agent.doctor import Level

    worst = [r for r in results if r.level is Level.RED] or [r for r in results if r.level is Level.YELLOW]
    if not worst:
        console.print("[green]every check passed[/green]")
        return
    for r in worst:
        word = "FAIL" if r.level is Level.RED else "WARN"
        console.print(f"[{STYLE[r.level.value]}]{word}[/] [bold]{r.name}[/bold]: {escape(r.summary)}")
        if r.hint:
            console.print(f"     what to do: {escape(r.hint)}")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
