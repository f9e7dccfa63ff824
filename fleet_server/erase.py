"""Everything the server holds about one device, found and deleted on request (a driver's or a phone user's right
to erasure): its sightings, tracks, passes, answers, refused messages, submissions, tokens and the audit rows of
its tokens, its status and last position, and the device itself. Defects only it saw go (their position and times
are where and when it was); those others saw too are recounted from the sightings left.

`device revoke` keeps the data; this is for when the data must go. It runs in one transaction under the
aggregation lock, so no batch of ingest recounts a defect halfway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psycopg

from fleet_server import aggregate
from fleet_server.config import AggregateConfig
from fleet_server.db import one_row

log = logging.getLogger(__name__)

# (table, the condition naming the device's rows), in an order the foreign keys allow.
ROWS = (
    ("sightings", "device_id = %(id)s"),
    ("coverage", "device_id = %(id)s"),
    ("defect_misses", "device_id = %(id)s"),
    ("command_results", "device_id = %(id)s"),
    ("rejected", "device_id = %(id)s"),
    ("http_submissions", "device_id = %(id)s"),
    ("audit_log", "token_id IN (SELECT id FROM api_tokens WHERE device_id = %(id)s)"),
    ("api_tokens", "device_id = %(id)s"),
    ("devices", "id = %(id)s"),
)

# The server commands that named the device (fleet_server.cli_audit) keep their row, who did what to it and when,
# but not what else was given: a display name is often the driver's, a payload may hold anything.
NAMING_COMMANDS = ("device add", "device revoke", "device erase", "cmd send", "model push")
SCRUB_COMMANDS = """
    UPDATE audit_log SET path = split_part(path, ' ', 1) || ' ' || split_part(path, ' ', 2) || ' ' || %(id)s
                                || ' (the rest erased with the device)'
    WHERE method = 'CLI' AND split_part(path, ' ', 3) = %(id)s
      AND split_part(path, ' ', 1) || ' ' || split_part(path, ' ', 2) = ANY(%(commands)s)
      AND split_part(path, ' ', 4) <> ''"""


@dataclass
class Erased:
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted (or that would be)
    defects_deleted: list[int] = field(default_factory=list)  # seen by this device alone
    defects_recounted: list[int] = field(default_factory=list)  # seen by others too


def erase_device(conn: psycopg.Connection, device_id: str, cfg: AggregateConfig, dry_run: bool = False) -> Erased:
    """Delete what the server holds about DEVICE_ID (say what would go with DRY_RUN); LookupError when it holds
    nothing at all."""
    params = {"id": device_id}
    out = Erased()
    with conn.transaction():
        aggregate.lock(conn)
        touched = conn.execute(
            "SELECT defect_id, bool_and(device_id = %(id)s) FROM sightings WHERE defect_id IN "
            "(SELECT DISTINCT defect_id FROM sightings WHERE device_id = %(id)s AND defect_id IS NOT NULL) "
            "GROUP BY defect_id ORDER BY defect_id", params).fetchall()
        out.defects_deleted = [d for d, alone in touched if alone]
        out.defects_recounted = [d for d, alone in touched if not alone]
        for table, where in ROWS:
            n = one_row(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", params))[0]
            if n:
                out.rows[table] = n
        if not out.rows:
            raise LookupError(f"the server holds nothing about a device {device_id!r}")
        if dry_run:
            return out
        for table, where in ROWS:
            conn.execute(f"DELETE FROM {table} WHERE {where}", params)
        scrubbed = conn.execute(SCRUB_COMMANDS, {**params, "commands": list(NAMING_COMMANDS)}).rowcount
        if out.defects_deleted:
            conn.execute("DELETE FROM defects WHERE id = ANY(%s)", (out.defects_deleted,))  # history cascades
            conn.execute("INSERT INTO defect_removals (defect_id) SELECT unnest(%s::bigint[]) ON CONFLICT DO NOTHING",
                         (out.defects_deleted,))
        aggregate.refresh(conn, set(out.defects_recounted), cfg)
    log.warning("erased device %s: %s; defects deleted %s, recounted %s; %d server commands' details dropped",
                device_id, out.rows, out.defects_deleted, out.defects_recounted, scrubbed)
    return out
