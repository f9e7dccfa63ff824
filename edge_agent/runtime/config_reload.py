"""`cmd/config-reload`: the fleet server asks the agent to take its config file again.

The file is read and validated as at start. Invalid: the answer is `invalid` with every bad key named, and the
agent keeps running on the config it has. Unchanged: `unchanged`, nothing else happens. Valid and changed: the
answer is `restarting`, and once the broker has it the agent stops cleanly and exits with EXIT_CONFIG_RELOAD,
which the service manager restarts (systemd's Restart=always) with the new config: every part is built from
it exactly as at a normal start, which a partial in-process reconfiguration could not promise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import config as agent_config

log = logging.getLogger(__name__)

COMMAND = "config-reload"
EXIT_CONFIG_RELOAD = 4  # `edge-agent run` ends with this after a config-reload; systemd starts it again


class ConfigReload:
    """Handles cmd/config-reload for the agent started from PATH with CURRENT; RESTART stops the agent."""

    def __init__(self, path: Path | str, current: agent_config.AgentConfig, restart: Callable[[], None]) -> None:
        self.path = Path(path)
        self.current = current
        self.restart = restart

    def register(self, uplink: Any) -> None:
        uplink.on_command(COMMAND, self.handle, on_published=self.published)

    def handle(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            new = agent_config.load(self.path)
        except agent_config.ConfigError as exc:
            log.error("config-reload: %s is invalid, keeping the running config: %s", self.path,
                      "; ".join(exc.problems))
            return {"ok": False, "status": "invalid", "problems": exc.problems,
                    "reason": f"{self.path} is invalid; still running on the old config: {'; '.join(exc.problems)}"}
        changed = [name for name in agent_config.AgentConfig.model_fields
                   if getattr(new, name) != getattr(self.current, name)]
        if not changed:
            return {"ok": True, "status": "unchanged", "reason": f"{self.path} is what the agent runs on"}
        log.warning("config-reload: %s changed (%s); restarting with it", self.path, ", ".join(changed))
        return {"ok": True, "status": "restarting", "changed": changed, "exit_code": EXIT_CONFIG_RELOAD,
                "reason": "the agent stops and its service manager starts it with the new config"}

    def published(self, result: dict[str, Any]) -> None:
        """Stop only once the broker has the answer: the server learns the reload was taken before the agent
        goes away."""
        if result.get("status") == "restarting":
            self.restart()
