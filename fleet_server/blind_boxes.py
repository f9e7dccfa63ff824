"""Boxes that drive past defects the rest of the fleet finds and report none of them.

A box whose camera, receiver, mount and health board all read fine can still find nothing: a smeared windscreen,
a lens out of focus, a model that sees nothing on these roads. It drove, sent its coverage and was quiet without
a word anywhere (docs/hardening.md row 30, "left"). The evidence is the server's own: the box's misses (a pass
that came within reach of an open defect going a way that finds it, and saw nothing: aggregate.record_misses)
of defects that a vehicle found after the miss, so they were there, counted since the box's last finding.
A box that finds defects half as often as the fleet does (the detection curve's overall rate: repair_odds)
misses n in a row with chance (1 - rate/2)^n; below `aggregate.blind_chance` that is a problem, code
`finds_nothing`. Judged by the ingest worker that learns the curve, in the same round: the box's first finding
after a fix clears it at the next round.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from fleet_server.config import AggregateConfig
from fleet_server.db import one_row

log = logging.getLogger(__name__)

# Of the passes within reach of a defect that was there, the share that found it: the curve's bins together.
FLEET_RATE = "SELECT coalesce(sum(found), 0)::float8, coalesce(sum(passes), 0)::float8 FROM detection_by_offset"

# Each box's misses since its last finding (within the window) of defects a vehicle found after the miss.
# Dismissed defects were never there.
RUNS = """
SELECT dv.id, r.misses, r.defects, r.first_miss, lf.at
FROM devices dv
CROSS JOIN LATERAL (SELECT max(s.captured_at) AS at FROM sightings s
                    WHERE s.device_id = dv.id AND s.captured_at > %(since)s) lf
CROSS JOIN LATERAL (SELECT count(*) AS misses, count(DISTINCT m.defect_id) AS defects,
                           min(m.started_at) AS first_miss
                    FROM defect_misses m JOIN defects d ON d.id = m.defect_id
                    WHERE m.device_id = dv.id AND m.started_at > coalesce(lf.at, %(since)s)
                      AND m.started_at < d.last_seen AND d.status <> 'dismissed') r
WHERE dv.revoked_at IS NULL AND r.misses >= %(fewest)s AND r.defects >= %(defects)s"""


def fewest_misses(rate: float, cfg: AggregateConfig) -> int | None:
    """How many misses in a row are less likely than blind_chance for a box finding blind_share of what the
    fleet finds at RATE; None when the rate says nothing (no finding, or every pass finds)."""
    found = rate * cfg.blind_share
    if not 0.0 < found < 1.0:
        return None
    return math.floor(math.log(cfg.blind_chance) / math.log(1.0 - found)) + 1


def judge(conn: psycopg.Connection, cfg: AggregateConfig) -> int:
    """Write each box's `devices.finds_nothing` (a dict, or NULL while it finds what it should) and return how
    many boxes find nothing. A fleet whose curve has fewer than offset_bin_min_passes passes is not judged."""
    found, passes = one_row(conn.execute(FLEET_RATE))
    fewest = fewest_misses(found / passes, cfg) if passes >= cfg.offset_bin_min_passes else None
    now: datetime = one_row(conn.execute("SELECT now()"))[0]
    flagged: dict[str, dict[str, Any]] = {}
    if fewest is not None:
        params = {"since": now - timedelta(days=cfg.blind_days), "fewest": fewest, "defects": cfg.blind_min_defects}
        for dev, misses, defects, first_miss, last_found in conn.execute(RUNS, params):
            flagged[dev] = {"misses": misses, "defects": defects, "first_miss": first_miss.isoformat(),
                            "last_found_at": last_found.isoformat() if last_found else None,
                            "fleet_rate": round(found / passes, 3), "days": cfg.blind_days,
                            "judged_at": now.isoformat()}
    with conn.transaction():
        conn.execute("UPDATE devices SET finds_nothing = NULL WHERE finds_nothing IS NOT NULL AND NOT id = ANY(%s)",
                     (list(flagged),))
        for dev, verdict in flagged.items():
            conn.execute("UPDATE devices SET finds_nothing = %s WHERE id = %s", (Jsonb(verdict), dev))
    if flagged:
        log.info("boxes that find nothing the fleet finds: %s", ", ".join(sorted(flagged)))
    return len(flagged)
