"""Command groups of `edge-agent`. Each module has `register(app)`; heavy imports stay inside commands
so that `edge-agent --help` starts fast on a Pi."""

from __future__ import annotations

import math
from typing import Any

import typer

DEFAULT_CONFIG = "/etc/edge-agent/agent.toml"  # where install.sh puts the box's config
CONFIG_ENV = "EDGE_AGENT_CONFIG"


def config_option(default: str | None = DEFAULT_CONFIG, help: str = "Agent config file (TOML)") -> Any:
    """--config/-c as every command takes it: the option, else $EDGE_AGENT_CONFIG, else DEFAULT (None: the
    built-in defaults). Read when the command runs, so an exported variable always counts."""
    return typer.Option(default, "--config", "-c", envvar=CONFIG_ENV, help=help)


def finite(value: float | None) -> float | None:
    """Callback for a float option, beside its min=/max= (the usual "Invalid value for '--x'" line, exit 2).
    The typer releases that pyproject allows check min=/max= with click's ranges, which let NaN through (every
    comparison with it is false): `--seconds nan` then made a deadline that is never reached."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value
