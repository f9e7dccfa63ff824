"""Is the agent running, and does the fleet server confirm what it sends? The parts can each be fine (a valid
config, a writable outbox, a broker that takes the login) while nothing reaches the server: the agent died,
the broker takes the messages but the server behind it never confirms them, or the server refuses them for
good (its ack names each with a reason).

Both checks only read: the status file the agent rewrites every heartbeat (the one `edge-agent status` reads)
and the outbox, opened read-only beside a running agent.
"""

from __future__ import annotations

import math
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.doctor.result import CheckResult, Context, Level
from edge_agent.link.heartbeat import (
    AgentVerdict,
    age_s,
    ago_text,
    clock_unset,
    is_stale,
    judge_agent,
    read_status_file,
    status_age_s,
    status_ago_text,
    status_file_of,
    uplink_trouble,
)
from roadmon_contract import validate

# A row the broker accepted (state 'sent') and the agent had to send this many times has outlived at least two
# ack timeouts (uplink.ack_timeout_s, 60 s at first, doubling): one can be a busy server, two in a row are not.
RESENT_ATTEMPTS = 3
# An online box has its rows confirmed within seconds, and a dead zone on the road holds them a few minutes.
# Ten minutes means something keeps them on the box; an hour means the fleet's map lacks this vehicle's work.
PENDING_WARN_S = 10 * 60
PENDING_FAIL_S = 60 * 60
AGENT_HINT = "`systemctl status edge-agent`, `journalctl -u edge-agent`"
REFUSED_IN_A_ROW = 2  # events refused since the last confirmed one: red (a lone refusal is a bad row, amber)
# Rows the server refused stay a finding this long after they were refused: the technician who looks the next
# morning still sees it, and the box turns green by itself a day after the cause is fixed (the rows stay).
REJECTED_RECENT_S = 24 * 3600
# (a phrase in the server's reason, a few words for the summary, what it means): the refusals of its
# validation (fleet_server/validate.py) that a box can cause and a technician can act on.
REJECTION_CAUSES = (
    ("is older than", "the server's ingest.horizon_days",
     "the server refuses events captured longer ago than its ingest.horizon_days: a recording replayed long "
     "after the drive, a box that was offline that long, or a clock that was wrong when they were captured"),
    ("is in the future", "the box's clock was ahead",
     "the box's clock ran ahead of the server's when they were captured (the clock check says whether it still does)"),
)


def _when(stamp: str | None) -> str:
    return ago_text(stamp) if stamp else "none yet"


def _uplink_off(name: str, cfg: AgentConfig) -> CheckResult | None:
    if cfg.uplink.enabled:
        return None
    return CheckResult(name, Level.SKIPPED, "uplink.enabled is false: the agent sends nothing and writes no status",
                       "events stay on this box", "set uplink.enabled = true to send them")


# ------------------------------------------------------------------------------------------------ agent
def _no_status(path: Path, data: dict[str, Any]) -> CheckResult:
    if not path.exists():  # amber: a fresh install checked before its first start has none either
        return CheckResult("agent", Level.YELLOW, f"no status file {path}: the agent has not run with this config",
                           "a running agent writes it as it starts and every heartbeat: without one it has never "
                           "started here (a fresh install), or died before its first heartbeat", AGENT_HINT, data)
    if not os.access(path, os.R_OK):
        return CheckResult("agent", Level.YELLOW, f"the status file {path} cannot be read by this user",
                           "whether the agent runs is unknown", "run doctor as root: `sudo edge-agent doctor`", data)
    return CheckResult("agent", Level.RED, f"the status file {path} cannot be read: the agent is not running or hung",
                       "the agent replaces it whole every heartbeat, so a damaged one is not being rewritten (a power "
                       "cut leaves it empty or half-written: the agent's next start rewrites it)",
                       f"{AGENT_HINT}; if the disk is suspect, `dmesg`", data)


def _hung(verdict: AgentVerdict, path: Path, status: dict[str, Any] | None, data: dict[str, Any]) -> CheckResult:
    """The agent holds its outbox (so it runs) although its status is missing, unreadable or stale: it cannot
    write the file (a full disk) or it hangs. Both once read "the agent is not running" while it was."""
    data.update(pid=verdict.pid, status_at=(status or {}).get("sent_at"))
    when = status_ago_text(status) if status else ("its start (there is none)" if not path.exists()
                                                  else "the file became unreadable")
    if verdict.disk_full:
        return CheckResult("agent", Level.RED, f"the agent runs (pid {verdict.pid}) but cannot write its status "
                           f"(last {when}): the disk is full ({verdict.free_mb:.1f} MB free)",
                           "it refuses new events while the disk is full (the outbox check says more)",
                           f"free space on {path.parent}: `du -xsh /var/log/* {path.parent}/*`", data)
    return CheckResult("agent", Level.RED, f"the agent runs (pid {verdict.pid}) but has not rewritten its status "
                       f"since {when}: it hangs", "a hung agent records and sends nothing",
                       f"`sudo systemctl restart edge-agent`; {AGENT_HINT}", data)


def check_agent(ctx: Context) -> CheckResult:
    assert ctx.cfg is not None
    off = _uplink_off("agent", ctx.cfg)
    if off is not None:
        return off
    path = status_file_of(ctx.cfg.outbox_path, ctx.cfg.uplink.status_file)
    heartbeat_s = ctx.cfg.uplink.heartbeat_s
    data: dict[str, Any] = {"status_file": str(path), "heartbeat_s": heartbeat_s}
    if path.exists() and not os.access(path, os.R_OK):
        return _no_status(path, data)  # not "it hangs": this user cannot tell (the file is the agent user's)
    status = read_status_file(path)
    if status is None:
        verdict = judge_agent(ctx.cfg.outbox_path, None, heartbeat_s)
        return _hung(verdict, path, None, data) if verdict.state == "hung" else _no_status(path, data)
    foreign = validate.errors("status", status)
    if foreign:  # its fields cannot be trusted, and the agent would have replaced it by now
        return CheckResult("agent", Level.RED, f"the status file {path} is not what the agent writes "
                           f"({'; '.join(foreign[:3])}): the agent is not running or hung",
                           "a running agent replaces it whole every heartbeat",
                           f"{AGENT_HINT}; delete the file: a running agent writes it anew", data)
    broker = (status.get("health") or {}).get("broker") or status.get("state", "unknown")
    age = status_age_s(status)
    data.update(broker=broker, status_at=status.get("sent_at"), age_s=None if age == math.inf else age,
                queue_depth=status.get("queue_depth"))
    when = status_ago_text(status)
    verdict = judge_agent(ctx.cfg.outbox_path, status, heartbeat_s)  # the rule `edge-agent status` applies
    if verdict.state == "stopped":
        return CheckResult("agent", Level.YELLOW, f"the agent stopped cleanly at {when}",
                           "nothing is recorded or sent until it starts again",
                           "`sudo systemctl start edge-agent`; if it stops again: `journalctl -u edge-agent`", data)
    if verdict.state == "hung":
        return _hung(verdict, path, status, data)
    if verdict.state == "not running" and is_stale(status, heartbeat_s):
        return CheckResult("agent", Level.RED, f"last status {when}, rewritten every {heartbeat_s:g} s when the "
                           "agent runs: the agent is not running (no process holds its outbox)",
                           "nothing is recorded or sent; rows wait in the outbox", AGENT_HINT, data)
    if verdict.state == "not running":
        # A fresh status outlives the process by up to a few heartbeats: 11 s after a kill -9 this read
        # "running ... broker connected" in green, beside a broker check that had already seen it gone.
        return CheckResult("agent", Level.RED, f"not running: its last status ({when}) said {broker}, but no agent "
                           "holds its outbox any more: it stopped without a word (killed, crashed, power cut)",
                           "nothing is recorded or sent; rows wait in the outbox", AGENT_HINT, data)
    trouble = uplink_trouble(status)
    data["uplink_trouble"] = trouble
    if trouble and (status.get("uplink") or {}).get("trouble"):
        return CheckResult("agent", Level.RED, f"running: status {when}, but its broker link keeps failing",
                           trouble, "find the other client: `pgrep -af edge-agent` here (another config or "
                           "state_dir), the broker's log for this id; a box copied from another's card needs its own "
                           "id and password (`fleet-server device add` on the server, then `edge-agent config`)", data)
    return CheckResult("agent", Level.GREEN, f"running: status {when}, broker {broker}" + (
        f" ({trouble})" if trouble else ""), data=data)


# --------------------------------------------------------------------------------------------- delivery
@dataclass
class _Finding:
    level: Level
    summary: str
    explanation: str
    hint: str


def _unacked(conn: Any) -> tuple[int, str | None]:
    """(rows the broker accepted but the agent sent RESENT_ATTEMPTS times or more, the oldest first PUBACK)."""
    from edge_agent.link.outbox import TABLE

    count, oldest = 0, []
    for table in TABLE.values():
        # state != 'confirmed' lets SQLite walk the queue's partial index instead of the whole table.
        n, first = conn.execute(f"SELECT COUNT(*), MIN(sent_at) FROM {table} WHERE state != 'confirmed' AND "
                                "state = 'sent' AND attempts >= ?", (RESENT_ATTEMPTS,)).fetchone()
        count += n
        oldest += [first] if first else []
    return count, min(oldest, default=None)


def _unacked_finding(count: int, oldest: str | None, last_confirmed: str | None) -> _Finding | None:
    if not count:
        return None
    # Nothing confirmed since those rows first went out: the server confirms nothing at all, not just these.
    silent = last_confirmed is None or (oldest is not None and last_confirmed < oldest)
    return _Finding(Level.RED if silent else Level.YELLOW,
                    f"{count} rows sent {RESENT_ATTEMPTS}+ times without the server's ack, the oldest accepted by "
                    f"the broker at {ago_text(oldest)}"
                    + ("" if silent else f"; last confirmation {_when(last_confirmed)}"),
                    "the broker accepts them but the fleet server does not confirm: its ingest is down, "
                    "stuck, or not subscribed to this broker",
                    "check the server/ingest (on the fleet server: `systemctl status 'fleet-server-ingest@*'` and "
                    "its log); the rows stay queued and are sent again")


def _pending_finding(oldest: str | None, depth: int) -> _Finding | None:
    age = age_s(oldest)
    if clock_unset(oldest):  # stored while the clock read 1970: how long they wait is unknown, not 56 years
        age = PENDING_WARN_S
    if age is None or age < PENDING_WARN_S:
        return None
    return _Finding(Level.RED if age >= PENDING_FAIL_S else Level.YELLOW,
                    f"{depth} unconfirmed rows, the oldest stored at {ago_text(oldest)}",
                    "rows wait when the agent is not running, the broker cannot be reached, or the server does "
                    "not confirm: the agent and broker checks say which; when both are green, the server does not",
                    "fix what those checks name; the rows are kept and sent once the way is clear")


def _cause(reason: str) -> tuple[str, str]:
    """(a few words, an explanation) for a reason of the server's that REJECTION_CAUSES knows; else ('', '')."""
    return next(((short, meaning) for phrase, short, meaning in REJECTION_CAUSES if phrase in reason), ("", ""))


def _rows_text(events: int, coverage: int) -> str:
    if events and coverage:
        return f"{events} events and {coverage} coverage records"
    return f"{events} events" if events else f"{coverage} coverage records"


def _rejected_finding(recent: dict[str, Any], refused_since_confirmed: int) -> _Finding | None:
    """Amber for rows the server refused within REJECTED_RECENT_S, naming the commonest reason: they are done on
    the box (not in the queue depth), so nothing else here would say that they never reached the map. Red when
    every event since the last confirmed one was refused, REFUSED_IN_A_ROW or more: every finding of the box is
    refused now (a receiver dating them 2007), whatever went through that morning."""
    if not recent["count"]:
        return None
    nothing_through = recent["events"] and refused_since_confirmed >= REFUSED_IN_A_ROW
    top = recent["reasons"][0]
    short, meaning = _cause(top["reason"])
    reason = top["reason"] + (f" ({short})" if short else "")
    many = "" if top["count"] == recent["count"] else f", {top['count']} of them for"
    others = "; ".join(f"{r['count']} for: {r['reason']}" for r in recent["reasons"][1:])
    return _Finding(Level.RED if nothing_through else Level.YELLOW,
                    f"{_rows_text(recent['events'], recent['coverage'])} refused by the server in the last "
                    f"{REJECTED_RECENT_S // 3600} h{many}: {reason}",
                    "the server refused them for good and the agent never sends them again: they are not on the "
                    "fleet's map" + (f"; {meaning}" if meaning else "") + (f"; also {others}" if others else ""),
                    "`edge-agent queue ls --state rejected --json` lists each with the server's reason; fix the "
                    "cause, then new events go through (the refused ones stay on the box until "
                    "`edge-agent queue purge --rejected`)")


def _merge(findings: list[_Finding], green: str, data: dict[str, Any]) -> CheckResult:
    if not findings:
        return CheckResult("delivery", Level.GREEN, green, data=data)
    level = Level.RED if any(f.level is Level.RED for f in findings) else Level.YELLOW
    return CheckResult("delivery", level, "; ".join(f.summary for f in findings),
                       "; ".join(f.explanation for f in findings), "; ".join(f.hint for f in findings), data)


def check_delivery(ctx: Context) -> CheckResult:
    from edge_agent.link.outbox import Outbox
    from edge_agent.link.outbox_file import OutboxUnavailable
    from roadmon_contract.times import utc_now_iso

    assert ctx.cfg is not None
    off = _uplink_off("delivery", ctx.cfg)
    if off is not None:
        return off
    path = ctx.cfg.outbox_path
    if not path.is_file():
        return CheckResult("delivery", Level.SKIPPED, f"no queue file at {path}: nothing to deliver")
    try:
        with Outbox(path, ctx.cfg.outbox, agent=False, read_only=True) as ob:
            stats = ob.stats()
            count, oldest_sent = _unacked(ob.conn)
            since = utc_now_iso(REJECTED_RECENT_S)
            recent = ob.rejections(since=since)
            last_confirmed = stats["last_confirmed_at"]
            refused_since_confirmed = (recent["events"] if last_confirmed is None or last_confirmed < since
                                       else ob.rejections(since=last_confirmed)["events"])
    except (OutboxUnavailable, RuntimeError, sqlite3.DatabaseError) as exc:  # the outbox check says why
        return CheckResult("delivery", Level.SKIPPED, f"not checked: the outbox cannot be read ({exc})",
                           "see the outbox check")
    data = {"queue_depth": stats["queue_depth"], "oldest_pending_at": stats["oldest_pending_at"],
            "last_confirmed_at": stats["last_confirmed_at"], "resent_unacked": count,
            "oldest_unacked_sent_at": oldest_sent, "rejected": stats["rejected"],
            "rejected_recent": recent["count"], "rejected_recent_events": recent["events"],
            "rejected_recent_coverage": recent["coverage"], "rejected_last_at": recent["last_at"],
            "rejected_reasons": recent["reasons"], "rejected_window_s": REJECTED_RECENT_S}
    findings = [f for f in (_unacked_finding(count, oldest_sent, stats["last_confirmed_at"]),
                            _pending_finding(stats["oldest_pending_at"], stats["queue_depth"]),
                            _rejected_finding(recent, refused_since_confirmed)) if f]
    green = (f"{stats['queue_depth']} unconfirmed rows, none older than {PENDING_WARN_S // 60} min or sent "
             f"{RESENT_ATTEMPTS}+ times; last confirmation {_when(stats['last_confirmed_at'])}"
             + (f"; {stats['rejected']} rows refused by the server more than {REJECTED_RECENT_S // 3600} h ago"
                if stats["rejected"] else ""))
    return _merge(findings, green, data)
