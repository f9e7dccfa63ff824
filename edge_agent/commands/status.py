"""`edge-agent status [--json]`: what the box is doing, from the outbox and the agent's status file.

The running agent's uplink rewrites <state_dir>/agent-status.json on every heartbeat and every broker state
change; the queue figures are read from the outbox itself, so they are current even when the agent is down.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edge_agent.commands.queue import CONFIG_OPTION, JSON_OPTION, OUTBOX_OPTION, open_outbox, resolve_paths
from edge_agent.link.heartbeat import (
    AgentVerdict,
    age_s,
    ago_text,
    ago_words,
    is_stale,
    judge_agent,
    last_fix_age_s,
    seconds_text,
    status_ago_text,
    uplink_trouble,
)
from roadmon_contract.status import HEALTH_WORDS, QUIET_DRIVE_M, SPARSE_FRAMES_M, mount_moved_words, sparse_frames_words

out = Console()
# The GNSS reader's and the camera's states on the health board (edge_agent/health.py): anything but these two
# means no position, or no frames.
STATE_STYLE = {"ok": "green", "starting": "yellow"}


def collect(config: str, outbox: Path | None) -> dict[str, Any]:
    from edge_agent.config.uplink import UplinkConfig
    from edge_agent.link.heartbeat import read_status_file, status_file_of

    path, cfg = resolve_paths(config, outbox)
    status_path = status_file_of(path, (cfg.uplink if cfg else UplinkConfig()).status_file)
    unreadable = status_path.exists() and not os.access(status_path, os.R_OK)  # mode 0600: the agent's user's
    agent = None if unreadable else read_status_file(status_path)
    foreign = _not_a_status(agent)
    if foreign:
        agent = None  # parsed, but not the agent's: reading it would fail (or mislead) field by field
    heartbeat_s = cfg.uplink.heartbeat_s if cfg else 30.0
    if not path.exists() and cfg is not None:  # installed, never started: a monitoring script still gets its keys
        stats = _no_outbox_yet(path, cfg)
    else:
        with open_outbox(config, outbox) as ob:
            stats = ob.stats()
    verdict = judge_agent(path, agent, heartbeat_s, unreadable)
    state = "never started" if not path.exists() else verdict.state
    broker = "unknown (no status file: is the agent running?)"
    if foreign:
        broker = (f"unknown (the status file {status_path} is not what the agent writes: {foreign}; delete it, "
                  "a running agent writes it anew)")
    elif unreadable:
        broker = (f"unknown (the status file {status_path} cannot be read by this user: run as root or as the "
                  "agent's user, e.g. `sudo edge-agent status`)")
    elif agent is None and status_path.exists():  # replaced whole every heartbeat, but not fsynced (card wear)
        broker = (f"unknown (the status file {status_path} cannot be read: empty or half-written, as a power cut "
                  "leaves it; a running agent rewrites it every heartbeat, so it is not running or has not started)")
    if agent:
        broker = (agent.get("health") or {}).get("broker") or agent.get("state", "unknown")
        if broker != "stopped" and is_stale(agent, heartbeat_s):
            why = _why_stale(verdict)
            broker = f"{broker} (stale: status from {status_ago_text(agent)}; {why})"
        elif broker != "stopped" and (trouble := uplink_trouble(agent)):
            broker = f"{broker} ({trouble})"
        elif broker != "stopped" and state == "not running":  # killed a moment ago: its last words read "connected"
            broker = f"{broker} (at its last status; no agent runs now)"
    return {
        "agent": state,
        # One word for scripts: the broker link's state while the agent runs, else stopped or unknown.
        "broker_state": (str((agent.get("health") or {}).get("broker") or agent.get("state") or "unknown")
                         if agent and state == "running" else "stopped" if state == "stopped" else "unknown"),
        "broker": broker,
        "queue_depth": stats["queue_depth"],
        # Rows the server refused for good: done, so not in the queue depth, but never on the map either.
        "rejected": stats["rejected"],
        "oldest_pending_at": stats["oldest_pending_at"],
        "last_confirmed_at": stats["last_confirmed_at"],
        # The filtered vehicle position at the last frame the pipeline took (not the receiver's last fix,
        # whose age is gnss.last_fix_age_s): None before a frame, or when that frame had no position.
        "position": (agent or {}).get("fix"),
        "fps": (agent or {}).get("fps"),
        "m_per_frame": (agent or {}).get("m_per_frame"),
        "inference_ms": (agent or {}).get("inference_ms"),
        "health": (agent or {}).get("health") or {},  # always an object: scripts index it
        "mount": _mount(path, cfg, agent),
        "gnss": _gnss(agent, heartbeat_s),
        # Defects the camera saw that could not go on the map (no fix, stale, too uncertain): with GNSS
        # sending junk this grows while no event is sent.
        "events_no_fix": _counter(agent, "events_no_fix"),
        # Metres driven with the detector looking since its last event (or its start): doctor is amber past 20 km.
        "driven_m_since_event": _counter(agent, "driven_m_since_event"),
        "status_at": (agent or {}).get("sent_at"),
        # The uplink's flow control: window, ack timeout (doubled per round while the server does not answer)
        # and measured ack latency; docs/store-and-forward.md said status showed them, and it did not.
        "flow": ((agent or {}).get("uplink") or {}).get("flow") or {},
        # Final command answers the server has not acked yet (kept beside the outbox, sent again until acked).
        "answers_waiting": ((agent or {}).get("uplink") or {}).get("answers_waiting"),
        "disk_free_mb": stats["disk_free_mb"],
        "outbox_mb": stats["db_mb"],
        "budget_mb": stats["budget_mb"],
        "dropped": stats["dropped"] | ((agent or {}).get("dropped") or {}),
        "events": stats["events"],
        "coverage": stats["coverage"],
        "outbox": stats["path"],
        "status_file": str(status_path),
    }


def _no_outbox_yet(path: Path, cfg: Any) -> dict[str, Any]:
    """The queue figures of a box whose agent has not started yet: empty."""
    import shutil

    rows = {"pending": 0, "sent": 0, "confirmed": 0, "rejected": 0}
    try:
        free_mb: float | None = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free / 1e6
    except (OSError, StopIteration):
        free_mb = None
    return {"queue_depth": 0, "rejected": 0, "events": dict(rows), "coverage": dict(rows), "oldest_pending_at": None,
            "last_confirmed_at": None, "db_mb": 0.0, "disk_free_mb": free_mb, "budget_mb": cfg.outbox.budget_mb,
            "dropped": {}, "path": str(path)}


def _mount(outbox: Path, cfg: Any, agent: dict[str, Any] | None) -> dict[str, Any] | None:
    """The camera mount as the agent would report it after a start with this config (its kept frames judged now):
    running or not, with the uplink or without; else what its last status said."""
    if cfg is not None:
        from edge_agent.perception.mount_watch import mount_file_of, reading_from_file
        from edge_agent.runtime.assemble import load_projector

        try:
            reading = reading_from_file(mount_file_of(outbox), cfg.calibration, load_projector(cfg))
        except (OSError, ValueError):  # a calibration the agent cannot start with: doctor says why
            reading = None
        if reading is not None:
            return reading
    return (agent or {}).get("mount")


def _why_stale(verdict: AgentVerdict) -> str:
    """Why a status file is old: no agent, or one that runs but cannot write it (a full disk) or hangs."""
    if verdict.pid is None:
        return "is the agent running?"
    cause = "the disk is full" if verdict.disk_full else "it hangs, or cannot write there"
    return f"the agent (pid {verdict.pid}) runs but does not rewrite it: {cause}"


def _not_a_status(agent: dict[str, Any] | None) -> str | None:
    """What is wrong with a status file that parsed as a JSON object but is not a roadmon.status message (a
    foreign or hand-edited file, `{"health": 5}`); None when it is one, or when there is none."""
    if agent is None:
        return None
    from roadmon_contract import validate

    problems = validate.errors("status", agent)
    return "; ".join(problems[:3]) or None  # a few name the file well enough; all of them could fill a screen


def _quiet_text(driven_m: int | None) -> str:
    if driven_m is None:
        return "-"
    text = f"{driven_m / 1000:.1f} km"
    return f"[yellow]{text}: nothing found that far (see doctor)[/yellow]" if driven_m >= QUIET_DRIVE_M else text


def _counter(agent: dict[str, Any] | None, name: str) -> int | None:
    """A health-board counter from the status file's "counters"; None when the file does not carry it (no
    agent, or an older agent that does not write them)."""
    counters = (agent or {}).get("counters")
    if not isinstance(counters, dict):
        return None
    value = counters.get(name, 0)  # an agent that writes counters counts from 0 and writes those above it
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _gnss(agent: dict[str, Any] | None, heartbeat_s: float) -> dict[str, Any]:
    """The GNSS reader's state on the agent's health board and how old its last fix is (`last_fix_age_s`:
    with a running agent's reader "ok", as old as at the status's writing; without last_fix_at in the file, the
    fix was current then). The state is only now's
    while the agent runs: a stopped agent's is "stopped", a silent one's "unknown", and `last_state` keeps what
    its last status said."""
    health = (agent or {}).get("health") or {}
    state = health.get("gnss")
    live = bool(agent and agent.get("state") != "stopped" and not is_stale(agent, heartbeat_s))
    fix_age = last_fix_age_s(agent or {}, live)
    if fix_age is None and state == "ok":
        fix_age = 0.0 if live else age_s((agent or {}).get("sent_at"))
    info: dict[str, Any] = {"state": None if state is None else str(state), "last_fix_age_s": fix_age,
                            "problem": health.get("gnss_problem") if state in ("lost", "frozen") else None}
    if agent and state is not None and (agent.get("state") == "stopped" or is_stale(agent, heartbeat_s)):
        info.update(state="stopped" if agent.get("state") == "stopped" else "unknown", last_state=str(state))
    return info


def _gnss_text(gnss: dict[str, Any], status_at: str | None, agent: str = "not running") -> str:
    """The GNSS row: the reader's state (or why there is none now) and the one "last fix" figure."""
    if gnss["state"] is None:
        return "-"
    last_fix = "unknown" if gnss["last_fix_age_s"] is None else ago_words(gnss["last_fix_age_s"])
    if "last_state" in gnss:  # the agent is not running: its last status is history, not the receiver now
        why = "agent stopped" if gnss["state"] == "stopped" else f"agent {agent} (status is stale)"
        age = age_s(status_at)
        when = "" if age is None else f" {ago_words(age)}"
        return (f"[yellow]{why}[/yellow] (GNSS {escape(gnss['last_state'])} at its last status{when}), "
                f"last fix {last_fix}")
    style = STATE_STYLE.get(gnss["state"], "red")
    problem = f" ({escape(gnss['problem'])})" if gnss.get("problem") else ""
    return f"[{style}]{escape(gnss['state'])}[/{style}]{problem}, last fix {last_fix}"


def _part_text(info: dict[str, Any], part: str) -> str:
    """A part's state on the agent's health board (camera, detector), with what it means when it is not fine."""
    state = info["health"].get(part) if isinstance(info["health"], dict) else None
    if state is None:
        return "-"
    style = STATE_STYLE.get(str(state), "red")
    words = HEALTH_WORDS.get((part, str(state)))
    return f"[{style}]{escape(str(state))}[/{style}]" + (f" ({words})" if words else "")


def _fps_text(info: dict[str, Any]) -> str:
    """Frames through the detector a second, the detector's time for one and, while driving, metres between them
    (yellow and in words when too far apart for the tracker: roadmon_contract.status.SPARSE_FRAMES_M)."""
    if info["fps"] is None:
        return "-"
    ms = info.get("inference_ms")
    detector = f", detector {ms:.0f} ms a frame" if isinstance(ms, int | float) else ""
    step = info.get("m_per_frame")
    if step is None:
        return f"{info['fps']:.1f}{detector}"
    if step > SPARSE_FRAMES_M:
        return (f"{info['fps']:.1f}{detector} ([yellow]{sparse_frames_words(step)}[/yellow]; `edge-agent doctor` "
                "says what to change)")
    return f"{info['fps']:.1f}{detector} ([green]a frame every {step:.1f} m while driving[/green])"


def _mount_text(info: dict[str, Any]) -> str:
    """What the lane markings say of the camera's aim (edge_agent.perception.mount_watch), and how long ago."""
    mount = info.get("mount")
    if not isinstance(mount, dict):
        return "-" if info["status_at"] is None else "- (not judged yet: needs straight driving on marked roads)"
    when = f"judged {ago_text(mount.get('at'))}" if isinstance(mount.get("at"), str) else "judged"
    if (moved := mount_moved_words(mount)) is not None:
        return f"[red]{escape(moved)}[/red] ({when})"
    if mount.get("state") == "unclear":
        return f"[yellow]unclear[/yellow] ({escape(str(mount.get('why') or 'the markings disagree'))}; {when})"
    seen = f"pitch {mount.get('pitch_deg')}°, yaw {mount.get('yaw_deg')}°"
    if mount.get("height_m") is not None:
        seen += f", height {mount.get('height_m')} m"
    judged = "pitch, yaw and height" if mount.get("height_m") is not None else "pitch and yaw"
    return (f"[green]ok[/green]: {judged} as configured ({seen} on the road; roll is not checked; {when} over "
            f"{mount.get('frames')} frames)")


def _position_text(info: dict[str, Any]) -> str:
    """The filtered position at the last frame; '-' says why there is none."""
    pos = info["position"]
    if pos:
        return ", ".join(f"{k} {v}" for k, v in pos.items() if v is not None)
    if info["status_at"] is None:
        return "-"
    return "- (no frame processed)" if info["fps"] is None else "- (none at the last frame)"


def status(config: str = CONFIG_OPTION, outbox: Path | None = OUTBOX_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Queue depth, oldest pending, last confirmed, GNSS and last fix, position and broker state."""
    if not as_json:
        with open_outbox(config, outbox):  # a person is told in one line that the agent has not started here
            pass
    info = collect(config, outbox)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title="edge-agent status", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    broker = info["broker"]
    style = "green" if broker == "connected" else "yellow" if broker in ("connecting", "stopped") else "red"
    no_fix = info["events_no_fix"]
    no_fix_text = str(no_fix)
    if no_fix is None:
        no_fix_text = "-" if info["status_at"] is None else "- (not in this agent's status file)"
    if no_fix:  # seen but not placed: the antenna, a cold start, or a receiver sending junk
        no_fix_text = f"[yellow]{no_fix} defects seen but not placed (no usable GNSS position)[/yellow]"
    # In the pipeline's order, seeing -> placing -> sending: the camera was mid-table, under the queue figures.
    rows = [
        ("camera", _part_text(info, "camera")),
        ("fps", _fps_text(info)),
        ("camera mount", _mount_text(info)),
        ("detector", _part_text(info, "detector")),
        ("driven since a finding", _quiet_text(info["driven_m_since_event"])),
        ("GNSS", _gnss_text(info["gnss"], info["status_at"], info["agent"])),
        ("position", _position_text(info)),
        ("events without position", no_fix_text),
        ("agent", _agent_text(info["agent"])),
        ("broker", f"[{style}]{broker}[/{style}]"),
        ("uplink", _flow_text(info["flow"])),
        ("queue depth", f"{info['queue_depth']} unconfirmed "
                        f"(events {info['events']['pending']} pending / {info['events']['sent']} sent, "
                        f"coverage {info['coverage']['pending'] + info['coverage']['sent']})"),
        ("rejected by server", _rejected_text(info)),
        ("oldest pending", ago_text(info["oldest_pending_at"])),
        ("last confirmed", ago_text(info["last_confirmed_at"])),
        ("disk", f"outbox {info['outbox_mb']:.1f} MB of {info['budget_mb']:.0f} MB, "
                 f"{info['disk_free_mb']:.0f} MB free"),
        ("dropped", ", ".join(f"{k} {v}" for k, v in info["dropped"].items()) or "none"),
        ("status from", ago_text(info["status_at"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)


AGENT_WORDS = {"never started": "[yellow]never started here[/yellow]", "running": "[green]running[/green]",
               "stopped": "[yellow]stopped (cleanly)[/yellow]",
               "not running": "[red]not running[/red] (no process holds its outbox)",
               "hung": "[red]hung[/red] (it holds its outbox but does not rewrite its status)",
               "unknown": "[yellow]unknown[/yellow] (this user cannot read its status file)"}


def _agent_text(state: str) -> str:
    return AGENT_WORDS.get(state, escape(state))


def _flow_text(flow: dict[str, Any] | None) -> str:
    """Window and ack timeout; yellow while the timeout is backed off past its usual value (the server silent)."""
    if not isinstance(flow, dict) or flow.get("ack_timeout_s") is None:
        return "-"
    latency = flow.get("ack_latency_s")
    text = (f"{flow.get('window')} rows in flight at most, ack timeout {seconds_text(flow['ack_timeout_s'])}"
            + ("" if latency is None else f", acks take {latency:.1f} s"))
    return f"[yellow]{text} (backed off: the server has not answered)[/yellow]" if flow.get("backed_off") else text


def _rejected_text(info: dict[str, Any]) -> str:
    if not info["rejected"]:
        return "none"
    return (f"[yellow]{info['rejected']} rows (events {info['events']['rejected']}, coverage "
            f"{info['coverage']['rejected']}) refused for good; why: `edge-agent doctor --only delivery`[/yellow]")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
