"""Can this box reach its broker: DNS, TCP, TLS, login, and a publish under its own id? The steps come from
edge_agent/link/broker_probe.py; while the agent runs logged in, its status stands for the login (the broker may
bind the client id to the login, so a second login would take the agent's session)."""

from __future__ import annotations

from edge_agent.doctor.agent_view import running_agent
from edge_agent.doctor.result import CheckResult, Context, Level
from edge_agent.link.writer_lock import holder

WHY = {
    "dns": "the broker's name does not resolve: no network, or a wrong uplink.host",
    "tcp": "the broker does not answer on its port: down, firewalled, or a wrong uplink.port",
    "tls": "the encrypted connection cannot be set up, so the agent will not send anything",
    "auth": "the broker refuses this box's login: events stay queued on the box until it is fixed",
    "publish": "logged in, but the broker does not accept messages under this device id",
}


def check_broker(ctx: Context) -> CheckResult:
    from edge_agent.link.broker_probe import probe_broker

    assert ctx.cfg is not None
    cfg = ctx.cfg.uplink
    where = f"{cfg.host}:{cfg.port}"
    if not cfg.enabled:
        return CheckResult("broker", Level.SKIPPED, f"uplink.enabled is false: {where} not checked",
                           "events stay on this box", "set uplink.enabled = true to send them")
    logged_in, running = _beside_the_agent(ctx)
    steps = probe_broker(cfg, ctx.cfg.device.id, agent_logged_in=logged_in, agent_running=running)
    data = {"broker": where, "tls": cfg.tls, "steps": [s.as_dict() for s in steps]}
    failed = next((s for s in steps if s.ok is False), None)
    if failed is not None:
        return CheckResult("broker", Level.RED, f"{where}: {failed.name} failed: {failed.detail}",
                           WHY.get(failed.name, ""), failed.hint or "", data)
    summary = f"{where}: " + "; ".join(f"{s.name} {s.detail}" if s.name in ("tls", "auth") else f"{s.name} ok"
                                       for s in steps)
    if not cfg.tls and cfg.host not in ("localhost", "127.0.0.1", "::1"):
        return CheckResult("broker", Level.YELLOW, summary, "works, but without TLS the password travels in clear",
                           "set uplink.tls = true and port 8883", data)
    return CheckResult("broker", Level.GREEN, summary, data=data)


def _beside_the_agent(ctx: Context) -> tuple[str | None, str | None]:
    """(what says the agent is logged in, why the login cannot be tried): the probe must not log in beside a
    logged-in agent, wherever the broker binds client ids to logins a second login takes its session. An agent
    process whose status is stale or unreadable (a full disk stops its writes) may be logged in too."""
    assert ctx.cfg is not None
    agent = running_agent(ctx)
    if agent is not None:
        connected = agent.health("broker") == "connected"
        return (f"the running agent (pid {agent.pid}) is logged in" if connected else None), None
    pid = holder(ctx.cfg.outbox_path)
    return None, (None if pid is None else f"the agent (pid {pid}) runs, its status is stale: no second login")
