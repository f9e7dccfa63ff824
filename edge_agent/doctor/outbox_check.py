"""Can the outbox folder be written, is there room, and is the queue file sound? Read-only towards the queue:
a running agent keeps using it undisturbed."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

from edge_agent.doctor.result import CheckResult, Context, Level
from edge_agent.link.disk_guard import write_probe, write_trouble

MB = 1024 * 1024


def outbox_file(ctx: Context) -> Path:
    assert ctx.cfg is not None
    return ctx.cfg.outbox_path


def _queue(path: Path) -> tuple[str | None, dict[str, int]]:
    """(problem or None, unconfirmed rows per kind) from a read-only look at the SQLite file."""
    from edge_agent.link.outbox import TABLE

    uri = f"file:{path}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
            verdict = "; ".join(str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall())
            if verdict != "ok":
                return verdict, {}
            depth = {}
            for kind, table in TABLE.items():
                with contextlib.suppress(sqlite3.OperationalError):  # a queue older than this table
                    depth[kind] = conn.execute(
                        f"SELECT COUNT(*) FROM {table} WHERE state IN ('pending', 'sent')").fetchone()[0]
            return None, depth
    except sqlite3.DatabaseError as exc:
        return str(exc), {}


def check_outbox(ctx: Context) -> CheckResult:
    assert ctx.cfg is not None
    cfg = ctx.cfg.outbox
    path = outbox_file(ctx)
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
    queue_text = "no queue file yet"
    if path.exists():
        problem, depth = _queue(path)
        if problem:
            return CheckResult("outbox", Level.RED, f"{path} is damaged: {problem}",
                               "the agent moves a damaged queue aside at start and begins a new one; unsent events "
                               "in it need recovering by hand", "copy the file off the box before restarting", data)
        data["unconfirmed"] = depth
        data["db_mb"] = round(path.stat().st_size / MB, 2)
        queue_text = f"{sum(depth.values())} unconfirmed rows, {data['db_mb']} MB"
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
