"""How likely a defect's misses since its last sighting (or a manager's check) are while it is still there: what
flags it `likely_repaired` (issue 15, docs/server.md "Status").

Each miss is judged by how often passes going its way find the defect. Two things say that: the defect's own
record that way (the passes that found it against the misses before its last sighting), and how often the
fleet's passes find a defect of its class lying as far beside their path as this one lies beside the path of
the vehicles that found it going that way. The agent places a defect relative to itself, so a sighting's offset
beside the path (from its `position`, `vehicle` position and heading, which share the GNSS error) is good to a
few tenths of a metre (the heading's error times the distance ahead: 3 degrees at 6 m is 0.3 m) where GNSS is
metres off. A phone's report is not a pass (it says the defect is there, not that vehicles in the lane see it).
The fleet's rate by offset (the detection curve) is learned from the server's own data: passes of defects up to
their last sighting, when they surely were there (`learn`, kept in the table `detection_by_offset` and refreshed
by the ingest workers). The record alone (Laplace: one unseen miss more) needs 5 or 6 misses for a defect found
on two passes in three; with the curve a pothole in the wheel path is judged after 2, and one by the kerb, which
passes find one time in three, waits as long as before (docs/fleet_sim.md, "How far the goals are from reach").
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from fleet_server.config import AggregateConfig
from fleet_server.db import one_row

log = logging.getLogger(__name__)

CURVE_LOCK = 0x726D_6375  # advisory lock: one worker refreshes the curve at a time
# The curve is learned from the most recently seen defects, up to this many sightings in all: that gives every
# bin hundreds of passes, and learning costs ~40 us per sighting (1.7 s for 45,000 on the 2-core bench machine).
CURVE_SIGHTINGS = 100_000

# Passes that found each defect (since SINCE): a pass is one device's run of sightings with no gap over
# pass_gap_s, its way and offset those of its first sighting. Offset: the defect's distance beside the line
# through the vehicle along its heading (ST_Azimuth: radians clockwise from north, as heading_deg). A phone's
# report is no pass: it says the defect is there, not that vehicles in the lane see it (ground_projected false).
PASSES = """
SELECT defect_id, heading_deg, offset_m FROM (
    SELECT s.defect_id, s.captured_at, s.heading_deg,
           abs(ST_Distance(s.vehicle_geom, s.geom, false)
               * sin(ST_Azimuth(s.vehicle_geom, s.geom) - radians(s.heading_deg))) AS offset_m,
           s.captured_at - lag(s.captured_at) OVER (PARTITION BY s.defect_id, s.device_id
                                                    ORDER BY s.captured_at) AS since
    FROM sightings s WHERE s.defect_id = ANY(%(ids)s) AND s.captured_at > %(since)s
      AND coalesce((s.payload->>'ground_projected')::boolean, true)) p
WHERE since IS NULL OR since > %(gap)s
ORDER BY defect_id, captured_at"""

# Misses since SINCE, before or after the defect's last evidence (its last sighting, or a manager's check). Not
# those of a box the server names as finding nothing the fleet finds (blind_boxes), nor those it missed while
# named: they prove nothing.
MISSES = """
SELECT m.defect_id, m.bearing_deg, m.started_at > greatest(d.last_seen, d.checked_at) AS after
FROM defect_misses m JOIN defects d ON d.id = m.defect_id
WHERE m.defect_id = ANY(%(ids)s) AND m.started_at > %(since)s
  AND NOT m.blind   -- marked while its box was named, kept after it was fixed or revoked (migration 031)
  AND NOT EXISTS (SELECT 1 FROM devices dv WHERE dv.id = m.device_id AND dv.finds_nothing IS NOT NULL)"""


@dataclass
class Record:
    """One defect's evidence: the passes that found it ((heading, offset), oldest first) and the bearings of its
    misses before and after its last sighting (None: unknown, matches every way)."""

    cls: str
    passes: list[tuple[float | None, float | None]] = field(default_factory=list)
    missed_before: list[float | None] = field(default_factory=list)
    missed_after: list[float | None] = field(default_factory=list)


def offset_bin(offset_m: float, bin_m: float) -> int:
    return int(offset_m // bin_m)


@dataclass
class Curve:
    """The fleet's detection rate by class and offset bin: (class, bin) -> (passes that found, passes)."""

    bins: dict[tuple[str, int], tuple[int, int]]
    bin_m: float
    min_passes: int

    def rate(self, cls: str, offset_m: float | None) -> float | None:
        if offset_m is None:
            return None
        found, passes = self.bins.get((cls, offset_bin(offset_m, self.bin_m)), (0, 0))
        return found / passes if passes >= self.min_passes else None


def same_way(a: float | None, b: float | None, tol_deg: float) -> bool:
    return a is None or b is None or abs((a - b + 540.0) % 360.0 - 180.0) <= tol_deg


def way_offset(record: Record, bearing: float | None, tol_deg: float) -> float | None:
    """How far the defect lies beside the path of the vehicles that found it going BEARING's way (median)."""
    offsets = [off for head, off in record.passes if off is not None and same_way(head, bearing, tol_deg)]
    return statistics.median(offsets) if offsets else None


def found_share(found: int, missed: int, prior: float | None, prior_passes: float) -> float:
    """How often passes going one way find the defect: its record there (FOUND of FOUND + MISSED), with one
    unseen miss more, or blended with the fleet's PRIOR at its offset counted as PRIOR_PASSES passes."""
    if found == 0:
        return 0.0  # no vehicle going this way found it: the miss proves nothing
    if prior is None or prior_passes <= 0:
        return found / (found + missed + 1)
    return (prior_passes * prior + found) / (prior_passes + found + missed)


def still_there_chance(record: Record, curve: Curve | None, cfg: AggregateConfig) -> float:
    """The chance of RECORD's misses since its last sighting while it is there: the product over those misses
    of the chance that a pass going that miss's way misses it."""
    tol = cfg.miss_same_way_deg
    chance = 1.0
    for bearing in record.missed_after:
        found = sum(same_way(head, bearing, tol) for head, _ in record.passes)
        missed = sum(same_way(b, bearing, tol) for b in record.missed_before)
        prior = curve.rate(record.cls, way_offset(record, bearing, tol)) if curve else None
        chance *= max(1.0 - found_share(found, missed, prior, cfg.miss_prior_passes), 1e-9)
    return chance


def load_records(conn: psycopg.Connection, ids: list[int], cfg: AggregateConfig,
                 since: datetime = datetime.min.replace(tzinfo=UTC)) -> dict[int, Record]:
    """The evidence of IDS, from their passes and misses since SINCE (all of it by default)."""
    if not ids:
        return {}
    records = {i: Record(c) for i, c in conn.execute("SELECT id, class FROM defects WHERE id = ANY(%s)", (ids,))}
    params = {"ids": ids, "gap": timedelta(seconds=cfg.pass_gap_s), "since": since}
    for defect_id, heading, offset_m in conn.execute(PASSES, params):
        records[defect_id].passes.append((heading, offset_m))
    for defect_id, bearing, after in conn.execute(MISSES, params):
        (records[defect_id].missed_after if after else records[defect_id].missed_before).append(bearing)
    return records


def load_curve(conn: psycopg.Connection, cfg: AggregateConfig) -> Curve | None:
    if cfg.miss_prior_passes <= 0:
        return None
    rows = conn.execute("SELECT class, offset_bin, found, passes FROM detection_by_offset WHERE bin_m = %s",
                        (cfg.offset_bin_m,)).fetchall()
    return Curve({(c, b): (f, n) for c, b, f, n in rows}, cfg.offset_bin_m, cfg.offset_bin_min_passes)


def chances(conn: psycopg.Connection, ids: list[int], cfg: AggregateConfig) -> dict[int, float]:
    """For each of IDS, how likely its misses since its last sighting are while it is still there."""
    if not ids:
        return {}
    curve = load_curve(conn, cfg)
    return {i: still_there_chance(r, curve, cfg) for i, r in load_records(conn, ids, cfg).items()}


def learn(records: list[Record], cfg: AggregateConfig) -> dict[tuple[str, int], tuple[int, int]]:
    """The detection curve from RECORDS: every pass that found a defect going a way an earlier pass had found it
    (the first finding of a way is what made the way known, so it does not count), and every miss before the
    last sighting, each at the offset of the defect beside that way's path."""
    tol = cfg.miss_same_way_deg
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])

    def add(record: Record, bearing: float | None, found: bool) -> None:
        off = way_offset(record, bearing, tol)
        if off is not None:
            cell = counts[(record.cls, offset_bin(off, cfg.offset_bin_m))]
            cell[0] += found
            cell[1] += 1

    for record in records:
        for i, (head, _) in enumerate(record.passes):
            if head is not None and any(same_way(h, head, tol) for h, _ in record.passes[:i] if h is not None):
                add(record, head, True)
        for bearing in record.missed_before:
            if bearing is not None:
                add(record, bearing, False)
    return {key: (f, n) for key, (f, n) in counts.items()}


def refresh_curve(conn: psycopg.Connection, cfg: AggregateConfig) -> int | None:
    """Learn the curve again from the passes and misses of the last `detection_curve_days` of the defects seen
    then (the most recent, about CURVE_SIGHTINGS sightings by their all-time counts, at least one defect; not
    dismissed ones: those were never there) and replace the table's rows. A round that learns nothing (a quiet
    fortnight) keeps the last curve. None when another worker is at it; else the bins kept."""
    with conn.transaction():
        if not one_row(conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (CURVE_LOCK,)))[0]:
            return None
        since = one_row(conn.execute("SELECT now() - %s", (timedelta(days=cfg.detection_curve_days),)))[0]
        ids = [r[0] for r in conn.execute(
            """SELECT id FROM (
                   SELECT id, sighting_count,
                          sum(sighting_count) OVER (ORDER BY last_seen DESC, id) AS running FROM defects
                   WHERE status <> 'dismissed' AND last_seen > %s) d
               WHERE running - sighting_count < %s""", (since, CURVE_SIGHTINGS))]
        bins = learn(list(load_records(conn, ids, cfg, since).values()), cfg)
        if not bins:
            return 0
        conn.execute("DELETE FROM detection_by_offset")
        keys = list(bins)
        conn.execute("""INSERT INTO detection_by_offset (class, offset_bin, bin_m, found, passes)
                        SELECT * FROM unnest(%s::text[], %s::int[], %s::float8[], %s::bigint[], %s::bigint[])""",
                     ([k[0] for k in keys], [k[1] for k in keys], [cfg.offset_bin_m] * len(keys),
                      [bins[k][0] for k in keys], [bins[k][1] for k in keys]))
    log.debug("detection curve: %d bins from %d defects", len(bins), len(ids))
    return len(bins)
