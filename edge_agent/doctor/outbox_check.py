"""Can the outbox folder be written, is there room, and is the queue file sound? Read-only towards the queue:
a running agent keeps using it undisturbed."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from edge_agent.doctor.result import CheckResult, Context, Level
from edge_agent.link.disk_guard import write_probe, write_trouble

MB = 1024 * 1024
MOVED_ASIDE_WHY = ("a queue moved aside is never sent: events in it reach the server only once recovered (the "
                   "agent takes a sound one back at its next start)")
MOVED_ASIDE_HINT = ("copy each file named off the box for recovery (`edge-agent queue stats --outbox FILE` shows "
                    "what a readable one holds); delete it once its events are safe")


def outbox_file(ctx: Context) -> Path:
    assert ctx.cfg is not None
    return ctx.cfg.outbox_path


def _read_only(path: Path) -> contextlib.closing[sqlite3.Connection]:
    # SQLite's mode=ro: doctor cannot change a queue, not even by mistake, and a running agent goes on with it.
    from edge_agent.link.outbox_file import connect

    return contextlib.closing(connect(path, "ro"))


def _depth(conn: sqlite3.Connection) -> dict[str, int]:
    """Unconfirmed rows per kind; a kind whose table the file lacks (an older queue) is left out."""
    from edge_agent.link.outbox import TABLE

    depth = {}
    for kind, table in TABLE.items():
        with contextlib.suppress(sqlite3.OperationalError):
            depth[kind] = conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE state IN ('pending', 'sent')").fetchone()[0]
    return depth


def _queue(path: Path) -> tuple[str | None, dict[str, int]]:
    """(problem or None, unconfirmed rows per kind) from a read-only look at the SQLite file."""
    try:
        with _read_only(path) as conn:
            verdict = "; ".join(str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall())
            if verdict != "ok":
                return verdict, {}
            return None, _depth(conn)
    except sqlite3.DatabaseError as exc:
        return str(exc), {}


def _too_new(path: Path) -> str | None:
    """The refusal `run` and `replay` print for a queue a newer agent wrote, in their words; None otherwise."""
    from edge_agent.link.outbox_schema import SCHEMA_VERSION, migrate

    with _read_only(path) as conn:
        if conn.execute("PRAGMA user_version").fetchone()[0] <= SCHEMA_VERSION:
            return None  # an older queue is fine: the agent upgrades it at its next start
        try:
            migrate(conn)  # refuses a newer version before it runs a single statement
        except RuntimeError as exc:
            return str(exc)
    return None


def _moved_aside(path: Path) -> list[dict[str, Any]]:
    """Queues the agent found corrupt and renamed <outbox>.corrupt-<stamp> (see link/outbox_file.py's move_aside):
    name, size and unconfirmed rows (None: unreadable) of each. They may hold events never delivered."""
    found = []
    for old in sorted(path.parent.glob(f"{path.name}.corrupt-*")):
        if old.name.endswith(("-wal", "-shm")) or not old.is_file():
            continue
        size = sum(Path(f"{old}{suffix}").stat().st_size for suffix in ("", "-wal")
                   if Path(f"{old}{suffix}").is_file())
        try:
            with _read_only(old) as conn:
                depth = _depth(conn)
        except sqlite3.DatabaseError:
            depth = {}
        found.append({"path": str(old), "bytes": size, "unconfirmed": sum(depth.values()) if depth else None})
    return found


def _size_text(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB / 10 else f"{n / 1024:.1f} KB"


def _warn_moved_aside(result: CheckResult, path: Path) -> CheckResult:
    """RESULT, raised to at least yellow and told about queues moved aside beside PATH: not a failure (the
    agent runs on a new queue), but a person must know that events may be in them."""
    moved = _moved_aside(path)
    if not moved:
        return result
    result.data["moved_aside"] = moved
    names = ", ".join(f"{Path(m['path']).name} ({_size_text(m['bytes'])}, "
                      + ("unreadable)" if m["unconfirmed"] is None else f"{m['unconfirmed']} unconfirmed rows)")
                      for m in moved)
    result.summary += f"; {len(moved)} queue(s) moved aside as corrupt: {names}"
    if result.level is Level.GREEN:
        result.level = Level.YELLOW
    result.explanation = "; ".join(x for x in (result.explanation, MOVED_ASIDE_WHY) if x)
    result.hint = "; ".join(x for x in (result.hint, MOVED_ASIDE_HINT) if x)
    return result


def _file_problem(path: Path, data: dict[str, Any]) -> CheckResult | None:
    """A red result when the queue file at PATH cannot be used as it is; else None, with the queue's figures
    added to DATA when there is one."""
    if path.is_dir():
        return CheckResult("outbox", Level.RED, f"outbox.file {path} is a folder, not a file",
                           "the agent cannot open its queue there, so it cannot store a single event",
                           f"set outbox.file to a file name (the default is outbox.db), or remove the folder {path}",
                           data)
    if not path.exists():
        return None
    problem, depth = _queue(path)
    if problem:
        return CheckResult("outbox", Level.RED, f"{path} is damaged: {problem}",
                           "the agent moves a damaged queue aside at start and begins a new one; unsent events "
                           "in it need recovering by hand", "copy the file off the box before restarting", data)
    refusal = _too_new(path)
    if refusal:
        return CheckResult("outbox", Level.RED, f"{path}: {refusal}",
                           "`edge-agent run` and `replay` refuse this queue: a newer agent wrote it",
                           "install the agent version that wrote it (or a newer one); keep the file, it holds the "
                           "unsent events", data)
    data.update(unconfirmed=depth, db_mb=round(path.stat().st_size / MB, 2))
    return None


def check_outbox(ctx: Context) -> CheckResult:
    path = outbox_file(ctx)
    return _warn_moved_aside(_check_queue(ctx, path), path)


def _check_queue(ctx: Context, path: Path) -> CheckResult:
    assert ctx.cfg is not None
    cfg = ctx.cfg.outbox
    folder = path.parent
    data: dict = {"path": str(path)}
    if not folder.is_dir():
        return CheckResult("outbox", Level.RED, f"folder {folder} does not exist",
                           "the agent cannot store a single event",
                           "create it (systemd's StateDirectory= does, for the service user) or fix device.state_dir",
                           data)
    problem = write_probe(folder)
    if problem is not None:
        what, hint = write_trouble(problem)
        data["errno"] = problem.errno
        return CheckResult("outbox", Level.RED, f"cannot write in {folder}: {problem.strerror or problem}",
                           f"the folder {what}: the agent cannot store a single event", hint, data)
    usage = shutil.disk_usage(folder)
    free_mb = usage.free / MB
    data.update(free_mb=round(free_mb, 1), budget_mb=cfg.budget_mb, free_floor_mb=cfg.free_floor_mb)
    unusable = _file_problem(path, data)
    if unusable is not None:
        return unusable
    queue_text = "no queue file yet"
    if "unconfirmed" in data:
        queue_text = f"{sum(data['unconfirmed'].values())} unconfirmed rows, {data['db_mb']} MB"
    summary = f"{folder} writable, {free_mb:.0f} MB free (budget {cfg.budget_mb:.0f} MB), {queue_text}"
    if free_mb < cfg.free_floor_mb:
        return CheckResult("outbox", Level.RED, summary,
                           "below outbox.free_floor_mb: the outbox is already freeing space and may refuse events",
                           "free disk space (old logs: `journalctl --vacuum-size=100M`) or use a bigger card", data)
    if free_mb < cfg.budget_mb + cfg.free_floor_mb:
        return CheckResult("outbox", Level.YELLOW, summary,
                           "less free space than the outbox's budget: it will hit the floor before its budget",
                           "free disk space or lower outbox.budget_mb", data)
    return CheckResult("outbox", Level.GREEN, summary, data=data)
