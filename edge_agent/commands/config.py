"""`edge-agent config check|example`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from edge_agent import config as agent_config
from edge_agent.commands import config_option
from edge_agent.config.paths import missing_files

config_app = typer.Typer(help="Validate and show agent configuration files.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole (copy-paste)


@config_app.command("check")
def check(path: Path | None = typer.Argument(None, help="TOML config file to validate"),
          config: str | None = config_option(None, "The same, as every other command takes it")) -> None:
    """Validate FILE (or --config, or $EDGE_AGENT_CONFIG); print each problem with its key path; exit 1 when
    anything is wrong."""
    # `config check --config FILE` was refused (no such option) although every other command takes --config.
    if path is None:
        if config is None:
            raise typer.BadParameter("give the config file: `config check FILE` or --config FILE", param_hint="FILE")
        path = Path(config)
    try:
        cfg = agent_config.load(path)
    except agent_config.ConfigError as exc:
        err.print(f"[red]{exc.source}: {len(exc.problems)} problem(s)[/red]")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    missing = missing_files(cfg)
    for item in missing:  # a config made for another box may name its files: a warning, not an error
        err.print(f"  not found here: {item}", markup=False, highlight=False)
    unreadable = intrinsics_problem(cfg)
    if unreadable:  # there but unreadable (an empty file after a power cut): `run` refuses to start on it
        err.print(f"[red]{path}: calibration.intrinsics_file: {unreadable}[/red]", highlight=False)
        raise typer.Exit(1)
    typer.echo(f"{path}: ok" + (f" ({len(missing)} file(s) it names are not on this machine; relative names are "
                                "taken beside the config)" if missing else ""))


def intrinsics_problem(cfg: agent_config.AgentConfig) -> str | None:
    """Why the intrinsics file the config names cannot be read, as `run` would find it; None when it reads or is
    not on this machine (a warning above)."""
    from calibration.config import CalibrationError, read_intrinsics

    path = cfg.calibration.intrinsics_file
    if not path or not Path(path).exists():
        return None
    try:
        read_intrinsics(path)
    except CalibrationError as exc:
        return str(exc)
    return None


@config_app.command("example")
def example() -> None:
    """Print the documented example config."""
    typer.echo(agent_config.EXAMPLE.read_text(), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
