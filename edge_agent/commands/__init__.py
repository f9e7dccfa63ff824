"""Command groups of `edge-agent`. Each module has `register(app)`; heavy imports stay inside commands
so that `edge-agent --help` starts fast on a Pi."""

from __future__ import annotations

from typing import Any

import typer

DEFAULT_CONFIG = "/etc/edge-agent/agent.toml"  # where install.sh puts the box's config
CONFIG_ENV = "EDGE_AGENT_CONFIG"


def config_option(default: str | None = DEFAULT_CONFIG, help: str = "Agent config file (TOML)") -> Any:
    """--config/-c as every command takes it: the option, else $EDGE_AGENT_CONFIG, else DEFAULT (None: the
    built-in defaults). Read when the command runs, so an exported variable always counts."""
    return typer.Option(default, "--config", "-c", envvar=CONFIG_ENV, help=help)
