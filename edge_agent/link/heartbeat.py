"""The device's status: one dict built from the HealthBoard and the outbox, published retained on
roadmon/v1/<id>/status (schema roadmon.status/1) and written to a small file for `edge-agent status`."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from edge_agent import __version__
from edge_agent.health import HealthBoard
from edge_agent.link.outbox import CLOCK_SET_AFTER, Outbox
from roadmon_contract.times import utc_now_iso

log = logging.getLogger(__name__)

HEALTH_KEYS = ("camera", "gnss", "gnss_problem", "gnss_fix", "detector", "outbox", "uplink")


def build_status(state: str, device_id: str, outbox: Outbox | None, health: HealthBoard | None,
                 broker: str | None = None) -> dict[str, Any]:
    """A roadmon.status/1 message; STATE is online, offline or stopped, BROKER the uplink's own state."""
    snap = health.snapshot() if health else {}
    stats = outbox.stats() if outbox else {}
    dropped: dict[str, int] = dict(stats.get("dropped", {}))
    if snap.get("frames_dropped"):
        dropped["frames"] = snap["frames_dropped"]
    for name, n in snap.get("counters", {}).items():
        if "drop" in name or "refused" in name:
            dropped.setdefault(name, n)
    return {
        "state": state,
        "device_id": device_id,
        "sent_at": utc_now_iso(),
        "queue_depth": stats.get("queue_depth"),
        "oldest_pending_at": stats.get("oldest_pending_at"),
        "oldest_pending_age_s": age_s(stats.get("oldest_pending_at")),
        "last_confirmed_at": stats.get("last_confirmed_at"),
        "fix": snap.get("fix"),
        "last_fix_at": None if snap.get("fix_age_s") is None else utc_now_iso(snap["fix_age_s"]),
        # System clock minus the live receiver's UTC at its last fix (doctor cannot open the receiver beside us).
        "clock_offset_vs_gnss_s": snap.get("clock_offset_s"),
        "config_sha256": snap.get("config_sha256"),
        "fps": snap.get("fps"),
        "inference_ms": snap.get("inference_ms"),
        "m_per_frame": snap.get("m_per_frame"),
        # Cumulative since start: the server's road_inference_latency_seconds_count{status="error"}.
        "inference_errors": snap.get("counters", {}).get("detector_errors", 0),
        "model": snap.get("model"),
        "version": __version__,
        "disk_free_mb": stats.get("disk_free_mb"),
        "outbox_mb": stats.get("db_mb"),
        "dropped": dropped,
        # The health board's counters (events_no_fix, gnss_fixes, detector_errors, ...): `edge-agent status`
        # shows from them why tracks made no events.
        "counters": dict(snap.get("counters", {})),
        # The last defect seen that could not be placed, when and why: the server names it while it is recent.
        "last_unplaced": snap.get("last_unplaced"),
        # Pitch and yaw the lane markings show against the config's (perception.mount_watch); None until judged.
        "mount": snap.get("mount"),
        "health": {k: snap.get(k) for k in HEALTH_KEYS if k in snap} | ({"broker": broker} if broker else {}),
    }


CLOCK_SET = datetime.fromisoformat(CLOCK_SET_AFTER.replace("Z", "+00:00"))


def clock_unset(stamp: str | None) -> bool:
    """STAMP was written while the box's clock was not set yet."""
    when = _parse(stamp)
    return when is not None and when < CLOCK_SET


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def age_s(stamp: str | None) -> float | None:
    """Seconds since STAMP by the wall clock; None without a readable stamp or for one the unset clock made."""
    when = _parse(stamp)
    if when is None or when < CLOCK_SET:
        return None
    return round((datetime.now(UTC) - when).total_seconds(), 1)


def status_file_of(outbox: Path, status_file: str) -> Path:
    """Where the uplink writes its status: uplink.status_file beside the outbox OUTBOX (an absolute one stands
    as it is). The uplink, `edge-agent status` and doctor all look here."""
    return outbox.parent / status_file


# A status file older than this many heartbeats means the agent is not running or hung (it rewrites the file
# every heartbeat_s, also while offline); `edge-agent status` and doctor judge it the same way.
STALE_HEARTBEATS = 3


# Less free space than this (MB) and a stale status file of a running agent is put down to a full disk.
FULL_DISK_MB = 1.0


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_stamp() -> dict[str, Any]:
    """Which boot of the box, and when on that boot's clock: written into the status file beside `sent_at`,
    because a Pi without a clock chip boots with its last shutdown's time and NTP or GNSS moves it later, so
    a wall-clock age can be negative (a dead agent's file looks fresh) or hours too large."""
    try:
        boot_id: str | None = BOOT_ID.read_text().strip() or None
    except OSError:
        boot_id = None
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return {"boot_id": boot_id, "boot_s": round(time.clock_gettime(clock), 3)}


def status_age_s(status: dict[str, Any]) -> float | None:
    """How long ago the agent wrote STATUS (a status file): on the boot clock when it was written in this boot,
    infinite when in an earlier one (nothing wrote it since the box started: a power cut), else by the wall
    clock (a file written before `written` existed, or a system without a boot id)."""
    written = status.get("written")
    if isinstance(written, dict) and isinstance(written.get("boot_s"), int | float) and written.get("boot_id"):
        now = boot_stamp()
        if now["boot_id"] == written["boot_id"]:
            return round(now["boot_s"] - written["boot_s"], 1)
        if now["boot_id"] is not None:
            return math.inf
    return age_s(status.get("sent_at"))


def status_ago_text(status: dict[str, Any]) -> str:
    """'<sent_at> (N min ago)' by status_age_s; '(before the box last started)' for an earlier boot's."""
    age = status_age_s(status)
    if age is None:
        return "-"
    when = "before the box last started" if math.isinf(age) else ago_words(age)
    return f"{status.get('sent_at')} ({when})"


def is_stale(status: dict[str, Any], heartbeat_s: float) -> bool:
    """STATUS (a status file) is older than STALE_HEARTBEATS heartbeats and not a clean stop's."""
    age = status_age_s(status)
    return status.get("state") != "stopped" and age is not None and age > STALE_HEARTBEATS * heartbeat_s


class AgentVerdict(NamedTuple):
    """What the status file and the outbox's lock say of the agent. STATE is one word: running, hung (a process
    holds the outbox but its status is missing, unreadable or stale), stopped (cleanly), not running (no process
    holds the outbox), unknown (this user cannot read the status file). PID holds the outbox; FREE_MB is the free
    space beside it, which tells a hung agent from one that cannot write its status (FULL_DISK_MB)."""

    state: str
    pid: int | None = None
    free_mb: float | None = None

    @property
    def disk_full(self) -> bool:
        return self.free_mb is not None and self.free_mb < FULL_DISK_MB


def judge_agent(outbox: Path, status: dict[str, Any] | None, heartbeat_s: float,
                unreadable: bool = False) -> AgentVerdict:
    """The one rule `edge-agent status` and doctor's agent check apply (they were two, kept in step by hand).
    STATUS: the status file's content, None when there is none or it cannot be read."""
    from edge_agent.link.writer_lock import holder

    if unreadable:
        return AgentVerdict("unknown")
    if status is not None and status.get("state") == "stopped":  # a clean stop's last status (is_stale's rule)
        return AgentVerdict("stopped")
    pid = holder(outbox)
    if pid is None:
        return AgentVerdict("not running")
    if status is not None and not is_stale(status, heartbeat_s):
        return AgentVerdict("running", pid)
    try:
        free_mb: float | None = shutil.disk_usage(outbox.parent).free / 1e6
    except OSError:
        free_mb = None
    return AgentVerdict("hung", pid, free_mb)


def seconds_text(age: float) -> str:
    if age >= 2 * 86400:
        return f"{age / 86400:.0f} days"
    return f"{age:.0f} s" if age < 120 else f"{age / 60:.0f} min" if age < 7200 else f"{age / 3600:.1f} h"


def ago_words(age: float) -> str:
    """'N min ago'; a time ahead of this box's clock (it was stepped back since) said as such: it read
    '(-7254528 s ago)'."""
    if age < -5:
        return f"{seconds_text(-age)} ahead of this box's clock: the clock was set back since"
    return f"{seconds_text(max(age, 0.0))} ago"


def last_fix_age_s(status: dict[str, Any], live: bool) -> float | None:
    """How old the receiver's last fix is, by a status file. While the agent runs (LIVE) with its reader "ok",
    fixes keep coming: a change of state rewrites the file at once, so the age is the one at its writing. Counted
    to now instead, a file written 25 s ago read "last fix 25 s ago" with a fix every second."""
    stamp = status.get("last_fix_at")
    age = age_s(stamp) if isinstance(stamp, str) else None
    written = age_s(status.get("sent_at"))
    if age is not None and written is not None and live and (status.get("health") or {}).get("gnss") == "ok":
        return round(max(0.0, age - written), 1)
    return age


def ago_text(stamp: str | None) -> str:
    """'<stamp> (N min ago)', or '-' without a readable stamp."""
    if clock_unset(stamp):
        return f"{stamp} (before the box's clock was set)"
    age = age_s(stamp)
    return "-" if age is None else f"{stamp} ({ago_words(age)})"


def uplink_trouble(status: dict[str, Any]) -> str | None:
    """Why the agent's broker link fails, from its status: the repeated failure (a session taken over), else the
    last error while it is not connected (an old error of a link that came back is history)."""
    link = status.get("uplink")
    if not isinstance(link, dict):
        return None
    if isinstance(link.get("trouble"), str):
        return link["trouble"]
    error = link.get("last_error")
    return error if isinstance(error, str) and error and link.get("state") != "connected" else None


def write_status_file(path: Path, status: dict[str, Any]) -> None:
    """Atomically replace PATH with STATUS as JSON (a reader never sees half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(status, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk must not stop the uplink
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
        if exc.errno == errno.ENOSPC and _rewrite_in_place(path, status):
            return
        log.warning("could not write the status file %s: %s", path, exc)


def remove_leftovers(path: Path) -> None:
    """The temporary files a power cut left between writing a status and renaming it over PATH (the status is
    not fsynced: it is rewritten every heartbeat, and a card's writes are worth more than its last copy)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _rewrite_in_place(path: Path, status: dict[str, Any]) -> bool:
    """On a full disk a new file gets no block, but the old one has its own: overwrite it with the status,
    compact and padded with blanks to its size, when it fits. Else `status` and doctor said "agent not running"
    for a running agent, and the refusals the full disk causes (events_refused_disk_full) were nowhere to be
    seen. A reader may catch it half written for a moment; it reads None then, as for a damaged file."""
    text = json.dumps(status, separators=(",", ":")).encode()
    try:
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if len(text) > size:
                return False
            f.write(text + b" " * (size - len(text)))  # the size kept: the next, longer status fits too
        return True
    except OSError:
        return False


def read_status_file(path: Path) -> dict[str, Any] | None:
    """The status the agent last wrote; None when there is none or it is not a status (damaged, foreign)."""
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None
