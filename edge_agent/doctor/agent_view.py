"""What the running agent itself sees. It holds the serial receiver (exclusively) and the camera device while
it runs, so doctor opening them competed for the bytes and frames: a healthy receiver read "not one byte in
5 s", word for word what a dead one gives. While the agent runs with this config, doctor reports the agent's
own health for those parts instead (its status file, rewritten every heartbeat)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_agent.doctor.result import Context
from edge_agent.link.heartbeat import ago_words, is_stale, last_fix_age_s, read_status_file, status_file_of
from edge_agent.link.writer_lock import holder


@dataclass
class AgentView:
    pid: int
    status: dict[str, Any]

    def health(self, part: str) -> str:
        return str((self.status.get("health") or {}).get(part) or "unknown")

    @property
    def last_fix(self) -> str:
        # The age alone: the stamp in the file is the last fix at its writing, up to a heartbeat old beside a
        # "0 s ago" that is right.
        age = last_fix_age_s(self.status, live=True)  # a running agent's, by construction
        return "none yet" if age is None else ago_words(age)

    def counter(self, name: str) -> int:
        value = (self.status.get("counters") or {}).get(name, 0)
        return value if isinstance(value, int) else 0


def running_agent(ctx: Context) -> AgentView | None:
    """The agent that writes this config's outbox now, with a fresh status; None when there is none."""
    assert ctx.cfg is not None
    pid = holder(ctx.cfg.outbox_path)
    if pid is None:
        return None
    status = read_status_file(status_file_of(ctx.cfg.outbox_path, ctx.cfg.uplink.status_file))
    if status is None or status.get("state") == "stopped" or is_stale(status, ctx.cfg.uplink.heartbeat_s):
        return None
    return AgentView(pid, status)
