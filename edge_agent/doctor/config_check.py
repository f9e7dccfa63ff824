"""Is the config file there, valid, and free of settings that only belong in a lab?"""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent import config as agent_config
from edge_agent.doctor.agent_view import running_agent
from edge_agent.doctor.result import CheckResult, Context, Level

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _hint(path: Path) -> str:
    """What to do about a config that did not load: a wrong path or an unreadable file needs no key changed."""
    if not path.is_file():
        return ("no config file there: pass --config PATH or set EDGE_AGENT_CONFIG (the service reads "
                "/etc/edge-agent/agent.toml); `edge-agent config example` prints a documented one to start from")
    if not os.access(path, os.R_OK):
        return "run doctor as the agent's user or root, or fix the file's owner and mode (`ls -l`)"
    return ("fix what is named above (a key, or the line of a TOML syntax error); `edge-agent config example` "
            "shows every key with its meaning")


def check_config(ctx: Context) -> CheckResult:
    try:
        cfg = agent_config.load(ctx.config_path)
    except agent_config.ConfigError as exc:
        return CheckResult(
            "config", Level.RED, f"{ctx.config_path}: {len(exc.problems)} problem(s): " + "; ".join(exc.problems[:5]),
            "the agent refuses to start with an invalid config, so nothing else can run",
            _hint(Path(ctx.config_path)), data={"path": ctx.config_path, "problems": exc.problems})
    ctx.cfg = cfg
    warnings = []
    agent = running_agent(ctx)
    started_from = agent.status.get("config_sha256") if agent is not None else None
    if agent is not None and started_from and started_from != agent_config.file_sha256(ctx.config_path):
        warnings.append(f"the running agent (pid {agent.pid}) started from another version of this file: doctor "
                        "judges the file, the agent runs the old one until `sudo systemctl restart edge-agent` (or "
                        "the server's config-reload)")
    if cfg.uplink.enabled and not cfg.uplink.tls and cfg.uplink.host not in LOOPBACK:
        warnings.append(f"uplink.tls is off for a remote broker ({cfg.uplink.host}): the password travels in clear")
    if cfg.model_update.allow_http:
        warnings.append("model_update.allow_http is on: models could be replaced in transit")
    if not cfg.uplink.enabled:
        warnings.append("uplink.enabled is false: events stay on this box")
    if cfg.outbox.synchronous != "FULL":
        warnings.append("outbox.synchronous is NORMAL: a power cut (the ignition) can lose every event since the "
                        "queue's last checkpoint, up to thousands")
    update = cfg.model_update
    for key, value in (("model_update.ca_file", update.ca_file), ("model_update.public_key", update.public_key)):
        if value and "-----BEGIN" not in value and not os.access(value, os.R_OK):
            warnings.append(f"{key} {value} cannot be read: remote model updates will fail")
    data = {"path": ctx.config_path, "device_id": cfg.device.id, "warnings": warnings}
    summary = f"{ctx.config_path} is valid (device {cfg.device.id})"
    if warnings:
        return CheckResult("config", Level.YELLOW, summary + "; " + "; ".join(warnings),
                           "the agent runs, but not as a production box should", "change the settings named", data)
    return CheckResult("config", Level.GREEN, summary, data=data)
