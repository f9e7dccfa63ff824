"""Boxes that drive past defects the rest of the fleet finds and report none of them.

A box whose camera, receiver, mount and health board all read fine can still find nothing: a smeared windscreen,
a lens out of focus, a model that sees nothing on these roads. It drove, sent its coverage and was quiet without
a word anywhere (docs/hardening.md row 30, "left"). The evidence is the server's own: the box's misses (a pass
that came within reach of an open defect going a way that finds it, and saw nothing: aggregate.record_misses)
of defects that a vehicle found after the miss, so they were there, counted since the box's last finding.
A box that finds defects half as often as the fleet does misses them with chance the product of (1 - rate/2),
each miss at the fleet's rate for that defect's class and offset beside the path (the detection curve:
repair_odds); below `aggregate.blind_chance` that is a problem, code `finds_nothing`. Judged by the ingest worker
that learns the curve, in the same round: the box's first finding after a fix clears it at the next round. Its
misses while named are marked `blind` for good: they count neither toward `likely_repaired` nor in the curve.
"""

from __future__ import annotations

import logging
import math
import statistics
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from fleet_server import aggregate, repair_odds
from fleet_server.config import AggregateConfig
from fleet_server.db import one_row

log = logging.getLogger(__name__)

# Of the passes within reach of a defect that was there, the share that found it: the curve's bins together.
FLEET_RATE = "SELECT coalesce(sum(found), 0)::float8, coalesce(sum(passes), 0)::float8 FROM detection_by_offset"

# A finding is a sighting s of a defect another vehicle saw too: a box that finds nothing real but boxes a shadow
# now and then (a defect no one else sees) made a "finding" of it, and its run of misses started again each time.
A_FINDING = "EXISTS (SELECT 1 FROM sightings o WHERE o.defect_id = s.defect_id AND o.device_id <> s.device_id)"

# Newest first, so a healthy box's latest sighting ends the look.
LAST_FINDING = f"""
    SELECT s.captured_at AS at FROM sightings s
    WHERE s.device_id = dv.id AND s.captured_at > %(since)s AND {A_FINDING}
    ORDER BY s.captured_at DESC LIMIT 1"""

# Each box's misses since its last finding (within the window) of defects a vehicle found after the miss.
# Dismissed defects were never there.
RUNS = f"""
SELECT dv.id, r.misses, r.defects, r.first_miss, lf.at
FROM devices dv
LEFT JOIN LATERAL ({LAST_FINDING}) lf ON true
CROSS JOIN LATERAL (SELECT count(*) AS misses, count(DISTINCT m.defect_id) AS defects,
                           min(m.started_at) AS first_miss
                    FROM defect_misses m JOIN defects d ON d.id = m.defect_id
                    WHERE m.device_id = dv.id AND m.started_at > coalesce(lf.at, %(since)s)
                      AND m.started_at < d.last_seen AND d.status <> 'dismissed') r
WHERE dv.revoked_at IS NULL AND r.misses >= %(fewest)s AND r.defects >= %(defects)s"""

# The misses of RUNS, one row each, of the boxes that may be named (each after its last finding).
RUN_MISSES = """
SELECT m.device_id, m.defect_id, m.bearing_deg
FROM unnest(%(devs)s::text[], %(after)s::timestamptz[]) AS r(dev, after)
JOIN defect_misses m ON m.device_id = r.dev AND m.started_at > r.after
JOIN defects d ON d.id = m.defect_id
WHERE m.started_at < d.last_seen AND d.status <> 'dismissed'"""

# A verdict cleared (the box found something, or was revoked): its misses from its first counted one up to its
# next finding (or to now) stay marked, so they prove nothing later either.
MARK_CLEARED = f"""
WITH old AS (      -- RETURNING gives the new row: the verdict is read before it goes
    SELECT id, (finds_nothing->>'first_miss')::timestamptz AS first_miss FROM devices
    WHERE finds_nothing IS NOT NULL AND NOT id = ANY(%(flagged)s) ORDER BY id FOR UPDATE
), cleared AS (
    UPDATE devices dv SET finds_nothing = NULL FROM old WHERE dv.id = old.id RETURNING dv.id, old.first_miss)
UPDATE defect_misses m SET blind = true
FROM cleared c
WHERE m.device_id = c.id AND m.started_at >= c.first_miss AND NOT m.blind
  AND m.started_at < coalesce((SELECT min(s.captured_at) FROM sightings s
                               WHERE s.device_id = c.id AND s.captured_at >= c.first_miss AND {A_FINDING}),
                              'infinity')"""


def fewest_misses(rate: float, cfg: AggregateConfig) -> int | None:
    """How many misses in a row are less likely than blind_chance for a box finding blind_share of what the
    fleet finds at RATE; None when the rate says nothing (no finding, or every pass finds)."""
    found = rate * cfg.blind_share
    if not 0.0 < found < 1.0:
        return None
    return math.floor(math.log(cfg.blind_chance) / math.log(1.0 - found)) + 1


def _miss_rates(conn: psycopg.Connection, runs: dict[str, datetime], pooled: float,
                cfg: AggregateConfig) -> dict[str, list[float]]:
    """For each box of RUNS (id -> the time after which its misses count), the fleet's rate at each of its
    misses: the detection curve's at the defect's class and offset beside that way's path (repair_odds), or
    POOLED where the curve has too few passes there."""
    rows = conn.execute(RUN_MISSES, {"devs": list(runs), "after": list(runs.values())}).fetchall()
    since = one_row(conn.execute("SELECT now() - %s", (timedelta(days=cfg.detection_curve_days),)))[0]
    records = repair_odds.load_records(conn, sorted({r[1] for r in rows}), cfg, since)
    curve = repair_odds.load_curve(conn, cfg)
    out: dict[str, list[float]] = {dev: [] for dev in runs}
    for dev, defect_id, bearing in rows:
        record = records[defect_id]
        rate = curve.rate(record.cls, repair_odds.way_offset(record, bearing, cfg.miss_same_way_deg)) \
            if curve is not None else None
        out[dev].append(pooled if rate is None else rate)
    return out


def judge(conn: psycopg.Connection, cfg: AggregateConfig) -> int:
    """Write each box's `devices.finds_nothing` (a dict, or NULL while it finds what it should) and return how
    many boxes find nothing. A fleet whose curve has fewer than offset_bin_min_passes passes is not judged.

    Each miss is judged at the fleet's rate for that defect (its class and offset beside the path: the curve),
    not at the fleet's rate over all passes: a healthy box whose route has only defects by the kerb, which
    every vehicle finds one pass in three, was named after 16 misses at the wheel paths' pooled 72 %."""
    found, passes = one_row(conn.execute(FLEET_RATE))
    pooled = found / passes if passes >= cfg.offset_bin_min_passes else None
    best = one_row(conn.execute("SELECT max(found::float8 / passes) FROM detection_by_offset WHERE passes >= %s",
                                (cfg.offset_bin_min_passes,)))[0]
    # The fewest misses that can name a box: at the highest rate of any bin (a box passing only such defects).
    top = max(pooled or 0.0, best or 0.0)
    fewest = None if pooled is None else fewest_misses(min(top, 0.999 / cfg.blind_share), cfg)
    now: datetime = one_row(conn.execute("SELECT now()"))[0]
    since = now - timedelta(days=cfg.blind_days)
    flagged: dict[str, dict[str, Any]] = {}
    if fewest is not None and pooled is not None:
        params = {"since": since, "fewest": fewest, "defects": cfg.blind_min_defects}
        runs = {r[0]: r for r in conn.execute(RUNS, params).fetchall()}
        rates = _miss_rates(conn, {dev: r[4] or since for dev, r in runs.items()}, pooled, cfg) if runs else {}
        for dev, misses, defects, first_miss, last_found in runs.values():
            chance = math.prod(max(1.0 - cfg.blind_share * rate, 0.0) for rate in rates[dev])
            if chance >= cfg.blind_chance:
                continue
            flagged[dev] = {"misses": misses, "defects": defects, "first_miss": first_miss.isoformat(),
                            "last_found_at": last_found.isoformat() if last_found else None,
                            "fleet_rate": round(statistics.fmean(rates[dev]), 3), "days": cfg.blind_days,
                            "judged_at": now.isoformat()}
    with conn.transaction():
        conn.execute(MARK_CLEARED, {"flagged": list(flagged)})
        for dev, verdict in sorted(flagged.items()):  # one order for every worker: two judging at once
            conn.execute("UPDATE devices SET finds_nothing = %s WHERE id = %s", (Jsonb(verdict), dev))
            # Its misses while named prove nothing, now and after it is fixed or revoked (repair_odds.MISSES).
            conn.execute("UPDATE defect_misses SET blind = true WHERE device_id = %s AND started_at >= %s "
                         "AND NOT blind", (dev, datetime.fromisoformat(verdict["first_miss"])))
    if flagged:
        log.info("boxes that find nothing the fleet finds: %s", ", ".join(sorted(flagged)))
    _judge_flags_again(conn, cfg)
    return len(flagged)


# Defects flagged likely_repaired whose misses since their last evidence include a blind box's.
FLAGGED_ON_BLIND = (f"SELECT d.id FROM defects d WHERE d.status = 'likely_repaired' "
                    f"AND {aggregate.BLIND_MISS_SINCE_EVIDENCE}")


def _judge_flags_again(conn: psycopg.Connection, cfg: AggregateConfig) -> None:
    """A blind box's misses can flag defects `likely_repaired` before the box is named (the naming takes its
    misses of defects others see again, the flag comes from those no one has passed since). Once they are marked,
    such a flag is judged again without them, and goes back (aggregate.apply_transitions) if the rest does not
    bear it out. Its own transaction: one that loses a deadlock with a batch tries again next round."""
    with conn.transaction():
        ids = [r[0] for r in conn.execute(FLAGGED_ON_BLIND)]
        aggregate.update_status(conn, ids, cfg)
