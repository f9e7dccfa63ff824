"""Sightings -> defects: merge, position, counts, status (new -> confirmed -> likely_repaired).

Runs inside the ingest transaction, under transaction-level advisory locks on the map's areas the batch
touches (`lock_areas`), so two ingest workers never create two defects for one pothole at the same moment,
while workers storing sightings in different areas do not wait for each other. Definitions:

- a sighting joins the nearest open defect of its class within `merge_radius_m` (widened to
  `accuracy_gate` x its h_accuracy_m, at most `max_gate_m`); `repaired` defects are closed, a new sighting
  there starts a new defect; `dismissed` ones still absorb sightings so a false positive stays dismissed;
- lines (cracks: sightings that give their orientation) are merged along the line: a crack sighting's axis
  is a segment through its position, a crack defect's `line` spans the axes of its sightings, and the gate is
  measured between the two lines, so the pieces of a long crack and the passes over it make one defect. The
  defect's line runs through its position along the mean orientation of its sightings, as far as their axes
  reach (so its ends carry the sightings' GNSS error); its length stays the median measured length;
- two point sightings one device made within `same_view_s` and farther apart than `same_view_split_m` are two
  defects (SEEN_APART: they share one GNSS error, which the gate is sized for);
- a pass is a run of one device's sightings with no gap longer than `pass_gap_s`;
- a miss is a coverage record (detector active) whose footprint covered the defect after its last sighting
  while the same device reported no sighting of it in that time.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta

import psycopg

from fleet_server import metrics, repair_odds
from fleet_server.config import AggregateConfig
from fleet_server.db import one_row
from roadmon_contract.geodesy import LocalFrame

log = logging.getLogger(__name__)
_LOCK_KEY = 0x526D4167
OPEN_FOR_MISSES = ("new", "confirmed", "scheduled", "likely_repaired")
AUTO_STATES = ("new", "confirmed", "likely_repaired")  # states the aggregator may change by itself
MISS_SLACK = timedelta(seconds=30)


def lock(conn: psycopg.Connection) -> None:
    """Serialise aggregation across workers until the transaction ends, everywhere (taking it twice is
    harmless). `lock_areas` is the narrow form the ingest path uses."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))


# Area locks. Two batches must not match, create, merge or recount defects of one spot at the same time (two
# defects for one pothole, lost counts), but batches in different parts of the map need not wait for each other.
# The map is cut into square cells of a Web-Mercator grid (conformal and continuous, so every worker computes
# the same cells); a point locks every cell that its box of half-width `reach` overlaps. Two points within
# `reach` of each other then always share a locked cell, at a cell border too. `reach` covers everything one
# sighting's aggregation can touch: the defects it may join (gate, plus a crack's length), the neighbours those
# may merge with, and theirs. A cell at least 2 x reach wide keeps a point to at most 4 cells.
# The number of locks is bounded (the lock table is shared and small): three levels with intention locks, as
# databases lock rows, pages and tables. Fine cells are taken exclusively under their coarse cell taken shared;
# a batch too spread out for `max_area_locks` fine cells takes its coarse cells exclusively instead, and one
# still too spread out the whole map (the old global lock, _LOCK_KEY). Every lock is taken in one order (level,
# then key), so advisory locks never deadlock.
_EARTH_R = 6_378_137.0
_COARSE = 16        # fine cells per coarse cell, along each axis
_LEVEL_FINE, _LEVEL_COARSE = 1, 2
_KEY_TAG = 0x52 << 56  # keeps area keys apart from the project's other advisory locks (small constants, hashtext)
_MASK = (1 << 26) - 1


def reach_m(cfg: AggregateConfig) -> float:
    """How far one sighting's aggregation can reach: join (gate + a crack's length), then a merge chain of two."""
    return 3.0 * (max(cfg.max_gate_m, cfg.merge_radius_m) + cfg.max_line_m)


def cell_m(cfg: AggregateConfig) -> float:
    return max(cfg.lock_cell_m, 2.0 * reach_m(cfg))


def _mercator(lat: float, lon: float) -> tuple[float, float, float]:
    """(x, y, scale): Web-Mercator metres and how many of them one metre on the ground is there."""
    lat = max(-85.0, min(85.0, lat))
    phi = math.radians(lat)
    return (_EARTH_R * math.radians(lon), _EARTH_R * math.log(math.tan(math.pi / 4 + phi / 2)),
            1.0 / math.cos(phi))


def area_cells(points: list[tuple[float, float]], boxes: list[tuple[float, float, float, float]],
               cfg: AggregateConfig) -> set[tuple[int, int]]:
    """Fine cells (cx, cy) to lock for POINTS (lat, lon) and for BOXES (min_lat, min_lon, max_lat, max_lon,
    e.g. a coverage segment's bounds), each widened by `reach_m`."""
    size, reach = cell_m(cfg), reach_m(cfg)
    cells: set[tuple[int, int]] = set()
    for lat0, lon0, lat1, lon1 in [(lat, lon, lat, lon) for lat, lon in points] + boxes:
        x0, y0, k0 = _mercator(lat0, lon0)
        x1, y1, k1 = _mercator(lat1, lon1)
        cells |= _box_cells(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), reach * max(k0, k1), size)
    return cells


def point_cells(points: list[tuple[float, float]], cfg: AggregateConfig) -> list[set[tuple[int, int]]]:
    """`area_cells` of each point on its own (for a batch: computed once per batch, ~2 us a point)."""
    size, reach = cell_m(cfg), reach_m(cfg)
    out = []
    for lat, lon in points:
        x, y, k = _mercator(lat, lon)
        out.append(_box_cells(x, y, x, y, reach * k, size))
    return out


def _box_cells(x0: float, y0: float, x1: float, y1: float, r: float, size: float) -> set[tuple[int, int]]:
    return {(cx, cy) for cx in range(int((x0 - r) // size), int((x1 + r) // size) + 1)
            for cy in range(int((y0 - r) // size), int((y1 + r) // size) + 1)}


def _key(level: int, cx: int, cy: int) -> int:
    return _KEY_TAG | (level << 52) | ((cx & _MASK) << 26) | (cy & _MASK)


def area_locks(cells: set[tuple[int, int]], max_locks: int) -> tuple[str, list[tuple[int, bool]]]:
    """(level, [(key, exclusive)...] in the order to take them) for CELLS, at most MAX_LOCKS + a few keys."""
    coarse = sorted({(cx // _COARSE, cy // _COARSE) for cx, cy in cells})
    if len(cells) + len(coarse) <= max_locks:
        return "fine", ([(_LOCK_KEY, False)] + [(_key(_LEVEL_COARSE, *c), False) for c in coarse]
                        + [(_key(_LEVEL_FINE, *c), True) for c in sorted(cells)])
    if len(coarse) <= max_locks:
        return "coarse", [(_LOCK_KEY, False)] + [(_key(_LEVEL_COARSE, *c), True) for c in coarse]
    return "global", [(_LOCK_KEY, True)]


def try_lock_areas(conn: psycopg.Connection, items: list[set[tuple[int, int]]]) -> list[bool]:
    """Lock, without waiting, the fine cells of each of ITEMS (each item's set of cells, from `area_cells`);
    returns per item whether it got all of its cells. The ingest worker defers the items that did not to its
    next batch instead of waiting for the worker that holds them: batches from a whole fleet touch cells all
    over the map, so two of them nearly always share one, and waiting made the second worker idle. Never waits
    (but for the whole-map lock, which only a batch too spread out for its cells takes), so it cannot deadlock.
    The caller keeps the cells within `max_area_locks` (`area_locks` is for more)."""
    wanted = sorted(set().union(*items)) if items else []
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_LOCK_KEY,))
    coarse = sorted({(cx // _COARSE, cy // _COARSE) for cx, cy in wanted})
    got_coarse = {c for c, ok in zip(coarse, [r[0] for r in conn.execute(
        "SELECT pg_try_advisory_xact_lock_shared(k) FROM unnest(%s::bigint[]) AS k",
        ([_key(_LEVEL_COARSE, *c) for c in coarse],))], strict=True) if ok}
    fine = [c for c in wanted if (c[0] // _COARSE, c[1] // _COARSE) in got_coarse]
    got = {c for c, ok in zip(fine, [r[0] for r in conn.execute(
        "SELECT pg_try_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k",
        ([_key(_LEVEL_FINE, *c) for c in fine],))], strict=True) if ok}
    metrics.AGGREGATE_LOCKS.labels("try").inc()
    return [cells <= got for cells in items]


def fits_fine(cells: set[tuple[int, int]], max_locks: int) -> bool:
    """Whether CELLS can be locked at the fine level within MAX_LOCKS (their coarse cells included)."""
    return len(cells) + len({(cx // _COARSE, cy // _COARSE) for cx, cy in cells}) <= max_locks


def lock_areas(conn: psycopg.Connection, points: list[tuple[float, float]],
               boxes: list[tuple[float, float, float, float]], cfg: AggregateConfig) -> str:
    """Lock the areas POINTS and BOXES touch until the transaction ends; returns the level taken."""
    level, locks = area_locks(area_cells(points, boxes, cfg), cfg.max_area_locks)
    shared = [k for k, excl in locks if not excl]
    exclusive = [k for k, excl in locks if excl]
    # unnest keeps the array's order; shared keys all come before the exclusive ones in area_locks' order.
    if shared:
        conn.execute("SELECT count(pg_advisory_xact_lock_shared(k)) FROM unnest(%s::bigint[]) AS k", (shared,))
    if exclusive:
        conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k", (exclusive,))
    metrics.AGGREGATE_LOCKS.labels(level).inc()
    return level


def assign(conn: psycopg.Connection, event_ids: list[str], loose: list[str], cfg: AggregateConfig) -> set[int]:
    """Give the batch's sightings that matched no defect on insert (LOOSE) new defects; returns them.

    `store` matches each new sighting to the nearest open defect as it inserts it, holding the aggregation
    lock already, so every defect a concurrent worker created is visible to that match: what it left loose
    matches nothing that exists, and only needs grouping among itself (two first sightings of one new pothole
    in one batch start one defect). EVENT_IDS are all the batch's new sightings."""
    created = create_defects(conn, loose, cfg) if loose else set()
    if event_ids:
        # A pass that saw the defect is no miss, even when its coverage record arrived before its event.
        conn.execute("""
            DELETE FROM defect_misses m USING sightings s
            WHERE s.event_id = ANY(%s::uuid[]) AND m.defect_id = s.defect_id AND m.device_id = s.device_id
              AND s.captured_at BETWEEN m.started_at - %s AND m.ended_at + %s""",
                     (event_ids, MISS_SLACK, MISS_SLACK))
    return created


def _gate(h: float, cfg: AggregateConfig) -> float:
    return min(max(cfg.merge_radius_m, cfg.accuracy_gate * h), max(cfg.max_gate_m, cfg.merge_radius_m))


def _seen_apart(views: list[tuple], viewer: str | None, t: float, x: float, y: float, cfg: AggregateConfig) -> bool:
    """SEEN_APART for a batch's new sightings: VIEWER (None: not a projected point) saw this one at (X, Y) and,
    within same_view_s, one of VIEWS farther than same_view_split_m from it."""
    return viewer is not None and cfg.same_view_s > 0 and any(
        device == viewer and abs(seen - t) <= cfg.same_view_s and math.hypot(vx - x, vy - y) > cfg.same_view_split_m
        for device, seen, vx, vy in views)


Segment = tuple[tuple[float, float], tuple[float, float]]  # (x, y) ends in metres; a point is both ends


def _segment(x: float, y: float, half: float, bearing: float | None) -> Segment:
    """A sighting's extent: its axis, HALF metres either way along BEARING (clockwise from north), or its point."""
    if not half or bearing is None:
        return (x, y), (x, y)
    dx, dy = half * math.sin(math.radians(bearing)), half * math.cos(math.radians(bearing))
    return (x - dx, y - dy), (x + dx, y + dy)


def _to_segment(p: tuple[float, float], s: Segment) -> float:
    (ax, ay), (bx, by) = s
    vx, vy = bx - ax, by - ay
    span = vx * vx + vy * vy
    t = 0.0 if span == 0 else max(0.0, min(1.0, ((p[0] - ax) * vx + (p[1] - ay) * vy) / span))
    return math.hypot(p[0] - ax - t * vx, p[1] - ay - t * vy)


def _crosses(a: Segment, b: Segment) -> bool:
    def side(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float]) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    return (side(*a, b[0]) * side(*a, b[1]) < 0) and (side(*b, a[0]) * side(*b, a[1]) < 0)


def segments_apart(a: Segment, b: Segment) -> float:
    """Metres between two extents, as PostGIS measures lines: grouping a batch by centre distance less both
    half-lengths took two cracks side by side, 12-20 m apart, for touching."""
    if _crosses(a, b):
        return 0.0
    return min(_to_segment(a[0], b), _to_segment(a[1], b), _to_segment(b[0], a), _to_segment(b[1], a))


def axial_turn(a: float, b: float) -> float:
    """Degrees between two orientations taken as axes (0-90): 10 and 190 are one line."""
    turn = abs(a - b) % 180.0
    return min(turn, 180.0 - turn)


def create_defects(conn: psycopg.Connection, event_ids: list[str], cfg: AggregateConfig) -> set[int]:
    """New defects for the batch's sightings that matched none: grouped in capture order, so the first
    sighting of a new pothole starts it and the batch's later ones within its gate join it."""
    loose = conn.execute("""SELECT event_id, class, ST_Y(geom::geometry), ST_X(geom::geometry), h_accuracy_m,
                                   CASE WHEN axis IS NULL THEN 0 ELSE size_length_m / 2 END,
                                   CASE WHEN axis IS NULL AND size_width_m IS NOT NULL THEN device_id END,
                                   extract(epoch FROM captured_at),
                                   CASE WHEN axis IS NOT NULL THEN (payload->'size_m'->>'orientation_deg')::float8 END
                            FROM sightings WHERE event_id = ANY(%s::uuid[]) AND defect_id IS NULL
                            ORDER BY captured_at""", (event_ids,)).fetchall()
    if not loose:
        return set()
    cell_m = max(cfg.max_gate_m, cfg.merge_radius_m)
    frame = LocalFrame(loose[0][2], loose[0][3])  # metres around the batch's first sighting
    cells: dict[tuple, list[int]] = {}
    leaders: list[tuple] = []  # (event_id, extent, bearing) of the sighting that starts each new defect
    views: list[list[tuple]] = []  # per leader, its point sightings' (device, time, x, y): SEEN_APART's rule
    member_of: list[int] = []  # index into leaders, per loose sighting
    for event_id, klass, lat, lon, h, half, viewer, t, bearing in loose:
        x, y = frame.to_enu(lat, lon)
        extent = _segment(x, y, half, bearing)
        cx, cy = int(x // cell_m), int(y // cell_m)
        best, best_d = None, _gate(h, cfg)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for i in cells.get((klass, cx + dx, cy + dy), ()):
                    _, lead_extent, lead_bearing = leaders[i]
                    if bearing is not None and lead_bearing is not None and \
                            axial_turn(bearing, lead_bearing) > cfg.max_crack_turn_deg:
                        continue  # a crack crossing another is a crack of its own
                    d = segments_apart(lead_extent, extent)
                    if d <= best_d and not _seen_apart(views[i], viewer, float(t), x, y, cfg):
                        best, best_d = i, d
        if best is None:
            best = len(leaders)
            leaders.append((event_id, extent, bearing))
            views.append([])
            cells.setdefault((klass, cx, cy), []).append(best)
        if viewer is not None:
            views[best].append((viewer, float(t), x, y))
        member_of.append(best)
    ids = [r[0] for r in conn.execute("SELECT nextval('defects_id_seq') FROM generate_series(1, %s)",
                                      (len(leaders),))]
    conn.execute("""
        INSERT INTO defects (id, class, geom, h_accuracy_m, first_seen, last_seen, sighting_count, vehicle_count,
                             pass_count, severity, confidence, size_width_m, size_length_m, line)
        SELECT n.id, s.class, s.geom, s.h_accuracy_m, s.captured_at, s.captured_at, 1, 1, 1, s.severity,
               s.confidence, s.size_width_m, s.size_length_m, s.axis
        FROM unnest(%s::bigint[], %s::uuid[]) AS n(id, event_id) JOIN sightings s USING (event_id)""",
                 (ids, [leader[0] for leader in leaders]))
    conn.execute("""UPDATE sightings s SET defect_id = n.id FROM unnest(%s::uuid[], %s::bigint[]) AS n(event_id, id)
                    WHERE s.event_id = n.event_id""", ([r[0] for r in loose], [ids[i] for i in member_of]))
    return set(ids)


# The stated accuracy counts passes, not sightings: 100 posts of one phone at one spot, or a vehicle's repeats in
# one pass, share one error and are no 10x better than one (they once made 11 m into 1.1 m). Longitudes are
# averaged unwrapped: each sighting's within 180 degrees of its defect's latest one, so a pothole
# on the antimeridian is not averaged to longitude 0 (179.99999 and -179.99999 once gave 0.0), and the result is
# wrapped back into -180..180 (pos). Differences to the defect's longitude are wrapped the short way (span).
REFRESH = """
WITH s0 AS (
    SELECT defect_id, ST_Y(geom::geometry) AS lat, ST_X(geom::geometry) AS lon, GREATEST(h_accuracy_m, 0.1) AS h,
           device_id, captured_at, severity, confidence, size_width_m, size_length_m, axis,
           (payload->'size_m'->>'orientation_deg')::float8 AS orientation,
           row_number() OVER w AS rn, first_value(ST_X(geom::geometry)) OVER w AS ref_lon
    FROM sightings WHERE defect_id = ANY(%(ids)s)
    WINDOW w AS (PARTITION BY defect_id ORDER BY captured_at DESC)
), s1 AS (      -- a pass: one device's sightings with no gap longer than pass_gap_s; starts = 1 opens one
    SELECT s0.*, lon - 360 * round((lon - ref_lon) / 360) AS ulon,
           CASE WHEN captured_at - lag(captured_at) OVER (PARTITION BY defect_id, device_id ORDER BY captured_at)
                     <= %(gap)s THEN 0 ELSE 1 END AS starts
    FROM s0
), s AS (
    SELECT s1.*, sum(starts) OVER (PARTITION BY defect_id, device_id ORDER BY captured_at) AS pass_no FROM s1
), recent AS (SELECT * FROM s WHERE rn <= %(cap)s),
first_mean AS (   -- weighted by 1/h^2
    SELECT defect_id, sum(lat / (h * h)) / sum(1 / (h * h)) AS lat, sum(ulon / (h * h)) / sum(1 / (h * h)) AS lon,
           count(*) AS n
    FROM recent GROUP BY defect_id
), kept AS (      -- robust: leave out sightings far outside their own accuracy, then average again
    SELECT r.* FROM recent r JOIN first_mean m USING (defect_id)
    WHERE sqrt(((r.lat - m.lat) * m_per_deg_lat(m.lat)) ^ 2 + ((r.ulon - m.lon) * m_per_deg_lon(m.lat)) ^ 2)
          <= %(sigma)s * GREATEST(r.h, 1)
), second_mean AS (
    SELECT defect_id, sum(lat / (h * h)) / sum(1 / (h * h)) AS lat, sum(ulon / (h * h)) / sum(1 / (h * h)) AS lon,
           count(*) AS n
    FROM kept GROUP BY defect_id
), first_acc AS (  -- the sightings of one pass share its GNSS error (and a phone's its offset): one measurement
    SELECT defect_id, 1 / sqrt(sum(1 / (h * h))) AS acc
    FROM (SELECT defect_id, min(h) AS h FROM recent GROUP BY defect_id, device_id, pass_no) per_pass
    GROUP BY defect_id
), second_acc AS (
    SELECT defect_id, 1 / sqrt(sum(1 / (h * h))) AS acc
    FROM (SELECT defect_id, min(h) AS h FROM kept GROUP BY defect_id, device_id, pass_no) per_pass
    GROUP BY defect_id
), pos AS (
    SELECT defect_id, lat, lon - 360 * floor((lon + 180) / 360) AS lon, acc FROM (
        SELECT f.defect_id,
               CASE WHEN 2 * s2.n >= f.n THEN s2.lat ELSE f.lat END AS lat,
               CASE WHEN 2 * s2.n >= f.n THEN s2.lon ELSE f.lon END AS lon,
               CASE WHEN 2 * s2.n >= f.n THEN a2.acc ELSE a1.acc END AS acc
        FROM first_mean f JOIN first_acc a1 USING (defect_id) LEFT JOIN second_mean s2 USING (defect_id)
             LEFT JOIN second_acc a2 USING (defect_id)) unwrapped
), passes AS (
    SELECT defect_id, sum(starts) AS n FROM s GROUP BY defect_id
), totals AS (
    SELECT defect_id, min(captured_at) AS first_seen, max(captured_at) AS last_seen, count(*) AS n,
           count(DISTINCT device_id) AS vehicles FROM s GROUP BY defect_id
), looks AS (
    SELECT defect_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY severity) AS severity,
           max(confidence) AS confidence,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY size_width_m) AS width,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY size_length_m) AS length
    FROM recent GROUP BY defect_id
), orient AS (    -- a line defect's bearing (radians from north): the axial mean of its sightings' orientations
    SELECT defect_id, atan2(sum(sin(2 * radians(orientation))), sum(cos(2 * radians(orientation)))) / 2 AS theta
    FROM recent WHERE axis IS NOT NULL GROUP BY defect_id
), span AS (      -- how far its sightings' axes reach along that bearing, from its position
    SELECT defect_id, theta, min(east * sin(theta) + north * cos(theta)) AS lo,
           max(east * sin(theta) + north * cos(theta)) AS hi
    FROM (SELECT r.defect_id, o.theta,
                 (ST_X(e.geom) - p.lon - 360 * round((ST_X(e.geom) - p.lon) / 360)) * m_per_deg_lon(p.lat) AS east,
                 (ST_Y(e.geom) - p.lat) * m_per_deg_lat(p.lat) AS north
          FROM recent r CROSS JOIN LATERAL ST_DumpPoints(r.axis::geometry) e JOIN orient o USING (defect_id)
               JOIN pos p USING (defect_id)
          WHERE r.axis IS NOT NULL) ends
    GROUP BY defect_id, theta
), lines AS (     -- the line through its position along its bearing, over that reach
    SELECT s.defect_id, ST_MakeLine(
               ST_Project(c.g, abs(s.lo), CASE WHEN s.lo < 0 THEN s.theta + pi() ELSE s.theta END)::geometry,
               ST_Project(c.g, abs(s.hi), CASE WHEN s.hi < 0 THEN s.theta + pi() ELSE s.theta END)::geometry) AS line
    FROM span s JOIN (SELECT defect_id, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography AS g FROM pos) c
         USING (defect_id)
), misses AS (    -- misses since the (new) last sighting or a manager's check
    SELECT m.defect_id, count(*) AS n, count(DISTINCT m.device_id) AS vehicles
    FROM defect_misses m JOIN totals t USING (defect_id) JOIN defects dd ON dd.id = m.defect_id
    WHERE m.started_at > greatest(t.last_seen, dd.checked_at) GROUP BY m.defect_id
)
UPDATE defects d SET geom = ST_SetSRID(ST_MakePoint(pos.lon, pos.lat), 4326)::geography, h_accuracy_m = pos.acc,
       first_seen = t.first_seen, last_seen = t.last_seen, sighting_count = t.n, vehicle_count = t.vehicles,
       pass_count = p.n, severity = l.severity, confidence = l.confidence, size_width_m = l.width,
       size_length_m = l.length, miss_count = coalesce(mi.n, 0), line = ln.line::geography, updated_at = now()
FROM pos JOIN totals t USING (defect_id) JOIN passes p USING (defect_id) JOIN looks l USING (defect_id)
     LEFT JOIN misses mi USING (defect_id) LEFT JOIN lines ln USING (defect_id)
WHERE d.id = pos.defect_id
RETURNING d.id, d.status, d.sighting_count, d.pass_count, d.miss_count, coalesce(mi.vehicles, 0)
"""


def refresh(conn: psycopg.Connection, defect_ids: set[int], cfg: AggregateConfig) -> None:
    """Recompute position, counts, misses and automatic status of DEFECT_IDS from their sightings and misses
    (one statement for all of them, whatever the batch size, then the few status changes)."""
    if not defect_ids:
        return
    rows = conn.execute(REFRESH, {"ids": sorted(defect_ids), "cap": cfg.max_sightings_for_position,
                                  "sigma": cfg.outlier_sigma, "gap": timedelta(seconds=cfg.pass_gap_s)}).fetchall()
    apply_transitions(conn, rows, cfg)


# A pass misses an open defect when its line comes within the camera's half width of it and within
# miss_reach_m, the detector was on, that vehicle did not see it then, and some vehicle going its way (within
# miss_same_way_deg) has seen it. The footprint is the camera's view 20 m ahead: a pothole on a street crossed
# at a junction or on the next street over is inside it but out of the detector's reach, and counting those
# passes flagged sound defects `likely_repaired` (docs/fleet_sim.md). How much a miss proves is the business
# of repair_odds.still_there_chance: passes going a way that rarely finds the defect prove little.
# A defect whose sightings carry no heading counts passes either way.
RECORD_MISSES = """
INSERT INTO defect_misses (defect_id, coverage_id, device_id, started_at, ended_at, bearing_deg)
SELECT d.id, c.coverage_id, c.device_id, c.started_at, c.ended_at, pass.bearing
FROM coverage c JOIN defects d
  ON ST_DWithin(coalesce(d.line, d.geom), c.line, least(COALESCE(c.half_width_m, %(hw)s), %(reach)s), false)
CROSS JOIN LATERAL (   -- the pass's bearing where it came closest
    SELECT degrees(ST_Azimuth(ST_StartPoint(g.geom)::geography, ST_EndPoint(g.geom)::geography)) AS bearing
    FROM ST_DumpSegments(c.line::geometry) g
    ORDER BY g.geom <-> d.geom::geometry LIMIT 1) pass
CROSS JOIN LATERAL (   -- its sightings by vehicles going this way, any way
    SELECT count(*) FILTER (WHERE roadmon_same_way(s.heading_deg, pass.bearing, %(same_way)s)) AS same_way,
           count(*) AS with_heading
    FROM sightings s WHERE s.defect_id = d.id AND s.heading_deg IS NOT NULL) seen
WHERE c.coverage_id = ANY(%(ids)s::uuid[]) AND c.detector_active
  AND d.status = ANY(%(open)s) AND d.first_seen < c.started_at
  AND NOT EXISTS (SELECT 1 FROM sightings s WHERE s.defect_id = d.id AND s.device_id = c.device_id
                  AND s.captured_at BETWEEN c.started_at - %(slack)s AND c.ended_at + %(slack)s)
  AND (pass.bearing IS NULL OR seen.with_heading = 0 OR seen.same_way > 0)
ON CONFLICT DO NOTHING RETURNING defect_id"""


def record_misses(conn: psycopg.Connection, coverage_ids: list[str], cfg: AggregateConfig) -> set[int]:
    """Add a miss for every open defect a new coverage record looked at without seeing it."""
    if not coverage_ids:
        return set()
    rows = conn.execute(RECORD_MISSES, {"hw": cfg.footprint_half_width_m, "ids": coverage_ids,
                                        "open": list(OPEN_FOR_MISSES), "slack": MISS_SLACK,
                                        "same_way": cfg.miss_same_way_deg, "reach": cfg.miss_reach_m}).fetchall()
    touched = {r[0] for r in rows}
    update_status(conn, sorted(touched), cfg)
    return touched


def update_status(conn: psycopg.Connection, ids: list[int], cfg: AggregateConfig) -> None:
    """The automatic transitions, each written to defect_history by 'aggregator'."""
    if not ids:
        return
    rows = conn.execute("""
        WITH locked AS (SELECT id FROM defects WHERE id = ANY(%s) ORDER BY id FOR UPDATE),
        counted AS (
            SELECT d.id, count(m.coverage_id) AS misses, count(DISTINCT m.device_id) AS vehicles
            FROM defects d JOIN locked USING (id)
            LEFT JOIN defect_misses m ON m.defect_id = d.id AND m.started_at > greatest(d.last_seen, d.checked_at)
            GROUP BY d.id)
        UPDATE defects d SET miss_count = c.misses FROM counted c WHERE d.id = c.id
        RETURNING d.id, d.status, d.sighting_count, d.pass_count, c.misses, c.vehicles""", (ids,)).fetchall()
    apply_transitions(conn, rows, cfg)


def apply_transitions(conn: psycopg.Connection, rows: list[tuple], cfg: AggregateConfig) -> None:
    """ROWS: (id, status, sightings, passes, misses, miss vehicles) of fresh defects; write the automatic status
    changes they call for, each with its defect_history row."""
    chances = repair_odds.chances(conn, [r[0] for r in rows if r[4] >= cfg.repair_misses
                                         and r[5] >= cfg.repair_vehicles], cfg)
    flagged = [r[0] for r in rows if r[1] == "likely_repaired"]
    scheduled = _scheduled_before_misses(conn, flagged)
    seen_again = _seen_since_flagged(conn, flagged) | _flagged_on_blind_misses(conn, flagged)
    changes: list[tuple[int, str, str, str]] = []
    for defect_id, status, sightings, passes, misses, miss_vehicles in rows:
        repaired = chances.get(defect_id, 1.0) <= cfg.repair_chance
        confirmed = sightings >= cfg.confirm_sightings and passes >= cfg.confirm_passes
        target = status
        if status in ("new", "confirmed", "scheduled") and repaired:
            target = "likely_repaired"
        elif status == "likely_repaired" and not repaired and defect_id in seen_again:
            target = "scheduled" if defect_id in scheduled else "confirmed" if confirmed else "new"
        elif status == "new" and confirmed:
            target = "confirmed"
        if target != status:
            changes.append((defect_id, status, target,
                            f"{sightings} sightings in {passes} passes; {misses} misses from {miss_vehicles} vehicles"))
    if changes:
        conn.execute("""UPDATE defects d SET status = c.status, status_changed_at = now(), updated_at = now(),
                               flag_misses_from = CASE WHEN c.status = 'likely_repaired' THEN (
                                   SELECT min(m.started_at) FROM defect_misses m WHERE m.defect_id = d.id
                                   AND m.started_at > greatest(d.last_seen, d.checked_at)) END
                        FROM unnest(%s::bigint[], %s::text[]) AS c(id, status) WHERE d.id = c.id""",
                     ([c[0] for c in changes], [c[2] for c in changes]))
        conn.execute("""INSERT INTO defect_history (defect_id, actor, from_status, to_status, note)
                        SELECT id, 'aggregator', old, new, note
                        FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS c(id, old, new, note)""",
                     tuple(list(col) for col in zip(*changes, strict=True)))


def _seen_since_flagged(conn: psycopg.Connection, ids: list[int]) -> set[int]:
    """Those of IDS seen after the first of the misses that made them `likely_repaired` began (within MISS_SLACK:
    the pass of a miss that turned out to have seen it). Only such a sighting takes a defect off that status: an
    old sighting uploaded late is no evidence against the flag, and a miss judged with a detection curve learned
    again since must not undo it by itself. Flags from before migration 021 go by any sighting stored since."""
    if not ids:
        return set()
    return {r[0] for r in conn.execute("""
        SELECT d.id FROM defects d WHERE d.id = ANY(%s) AND CASE
            WHEN d.flag_misses_from IS NOT NULL THEN d.last_seen >= d.flag_misses_from - %s
            ELSE EXISTS (SELECT 1 FROM sightings s WHERE s.defect_id = d.id AND s.stored_at >= d.status_changed_at)
        END""", (ids, MISS_SLACK))}


# Defect d's misses since its last evidence include one of a box named as finding nothing (blind_boxes: `blind`).
BLIND_MISS_SINCE_EVIDENCE = """EXISTS (
    SELECT 1 FROM defect_misses m WHERE m.defect_id = d.id AND m.blind
      AND m.started_at > greatest(d.last_seen, d.checked_at))"""


def _flagged_on_blind_misses(conn: psycopg.Connection, ids: list[int]) -> set[int]:
    """Those of IDS whose misses since their last evidence include one of a box named as finding nothing. Their
    flag is judged again without those misses, as if seen again: a blind box proved nothing by missing them."""
    if not ids:
        return set()
    return {r[0] for r in conn.execute(
        f"SELECT d.id FROM defects d WHERE d.id = ANY(%s) AND {BLIND_MISS_SINCE_EVIDENCE}", (ids,))}


def _scheduled_before_misses(conn: psycopg.Connection, ids: list[int]) -> set[int]:
    """Those of IDS that were `scheduled` when misses made them `likely_repaired`: seen again, they go back on the
    schedule (they became `confirmed` and a crew's booking fell off the manager's scheduled list)."""
    if not ids:
        return set()
    rows = conn.execute("""SELECT DISTINCT ON (defect_id) defect_id, from_status FROM defect_history
                           WHERE defect_id = ANY(%s) AND to_status = 'likely_repaired'
                           ORDER BY defect_id, at DESC, id DESC""", (ids,)).fetchall()
    return {defect_id for defect_id, before in rows if before == "scheduled"}


def set_status(conn: psycopg.Connection, defect_id: int, old: str | None, new: str, actor: str,
               note: str | None) -> None:
    # A note on the same status (a crew moved to Thursday) is history, not a status change.
    # A manager who sets a defect new or confirmed says it is there: misses before now no longer count.
    conn.execute("""UPDATE defects SET status = %(new)s, updated_at = now(),
                    status_changed_at = CASE WHEN status = %(new)s THEN status_changed_at ELSE now() END,
                    checked_at = CASE WHEN %(new)s IN ('new', 'confirmed') THEN now() ELSE checked_at END,
                    miss_count = CASE WHEN %(new)s IN ('new', 'confirmed') THEN 0 ELSE miss_count END
                    WHERE id = %(id)s""", {"new": new, "id": defect_id})
    conn.execute("INSERT INTO defect_history (defect_id, actor, from_status, to_status, note) "
                 "VALUES (%s, %s, %s, %s, %s)", (defect_id, actor, old, new, note))


def add_note(conn: psycopg.Connection, defect_id: int, status: str, actor: str, note: str) -> None:
    """A note alone (a crew moved to Thursday): history, and nothing the repair rule reads changes."""
    conn.execute("UPDATE defects SET updated_at = now() WHERE id = %s", (defect_id,))
    conn.execute("INSERT INTO defect_history (defect_id, actor, from_status, to_status, note) "
                 "VALUES (%s, %s, %s, %s, %s)", (defect_id, actor, status, status, note))


# Two point sightings that one device made within same_view_s of each other, ground-projected (a phone's photo
# position is the phone's), farther apart than same_view_split_m: two potholes 4.6 m apart in one view were one
# defect, since the gate (5 m or more) is sized for the GNSS error between passes, which one view does not have.
SEEN_APART = """
    x.device_id = y.device_id AND x.event_id <> y.event_id AND x.axis IS NULL AND y.axis IS NULL
    AND x.size_width_m IS NOT NULL AND y.size_width_m IS NOT NULL
    AND y.captured_at BETWEEN x.captured_at - make_interval(secs => %(view_s)s)
                          AND x.captured_at + make_interval(secs => %(view_s)s)
    AND NOT ST_DWithin(x.geom, y.geom, %(split_m)s, false)"""


def split_views(conn: psycopg.Connection, event_ids: list[str], cfg: AggregateConfig) -> list[str]:
    """Take a sighting out of a defect that holds two seen apart in one view (SEEN_APART): returns them, loose
    again, for `create_defects` (a batch's sightings all matched on insert against the defects as they were
    before it, so one vehicle's two potholes in one batch joined one). Of a new sighting and one the defect held
    already, the one farther from the defect's other sightings leaves: a pothole's sighting that had joined its
    neighbour 6 m on (within the gate) kept its place there and pushed that neighbour's own sighting out, so one
    pothole had no marker and the other two. Of two new ones, the later leaves."""
    if not event_ids or cfg.same_view_s <= 0:
        return []
    pairs = conn.execute(f"""
        SELECT x.event_id::text, y.event_id::text, y.event_id = ANY(%(ids)s::uuid[]), r.dx, r.dy
        FROM sightings x JOIN sightings y ON y.defect_id = x.defect_id
        LEFT JOIN LATERAL (  -- mean distances to the defect's other sightings (none: NULL)
            SELECT avg(ST_Distance(x.geom, z.geom, false)) AS dx, avg(ST_Distance(y.geom, z.geom, false)) AS dy
            FROM sightings z WHERE z.defect_id = x.defect_id AND z.event_id NOT IN (x.event_id, y.event_id)) r ON true
        WHERE x.event_id = ANY(%(ids)s::uuid[]) AND x.defect_id IS NOT NULL AND {SEEN_APART}
          AND (y.event_id <> ALL(%(ids)s::uuid[]) OR (y.captured_at, y.event_id) < (x.captured_at, x.event_id))
        ORDER BY x.captured_at, x.event_id""", {"ids": event_ids, "view_s": cfg.same_view_s,
                                                 "split_m": cfg.same_view_split_m}).fetchall()
    leaving: list[str] = []
    for new, held, held_is_new, new_off, held_off in pairs:
        if new in leaving or held in leaving:
            continue
        closer = not held_is_new and new_off is not None and held_off is not None and new_off < held_off
        leaving.append(held if closer else new)
    if leaving:
        conn.execute("UPDATE sightings SET defect_id = NULL WHERE event_id = ANY(%s::uuid[])", (leaving,))
    return leaving


def merge_neighbours(conn: psycopg.Connection, defect_ids: set[int], cfg: AggregateConfig) -> set[int]:
    """Fold defects that lie within each other's gate (the merge radius, widened by their combined accuracy)
    into one: the one a manager acted on, else the older (`_ranks`); the other's id redirects to it (the API
    answers it with the survivor's address). Early sightings can start two defects for one pothole before the
    positions settle; this undoes that. Returns the surviving defects that changed.
    """
    changed: set[int] = set()
    pending = set(defect_ids)
    for _ in range(10):
        if not pending:
            break
        pairs = conn.execute(f"""
            SELECT DISTINCT ON (drop_id) keep_id, drop_id FROM (
                SELECT LEAST(a.id, b.id) AS keep_id, GREATEST(a.id, b.id) AS drop_id,
                       coalesce(a.line, a.geom) <-> coalesce(b.line, b.geom) AS dist
                FROM defects a JOIN defects b
                  ON b.class = a.class AND b.id <> a.id
                 -- by the extents (an area crack near a long crack's end stayed its own defect, its marker
                 -- 20-40 m from the line's), with the markers within max_line_m (else lines chain without end)
                 AND ST_DWithin(a.geom, b.geom, GREATEST(%(max_gate)s, %(radius)s) + %(max_line)s, false)
                 AND (a.line IS NULL OR b.line IS NULL OR roadmon_axial_turn(
                      roadmon_line_bearing(a.line), roadmon_line_bearing(b.line)) <= %(max_turn)s)
                 AND ST_DWithin(coalesce(a.line, a.geom), coalesce(b.line, b.geom), LEAST(GREATEST(%(radius)s,
                     %(gate)s * sqrt(coalesce(a.h_accuracy_m, 0) ^ 2 + coalesce(b.h_accuracy_m, 0) ^ 2)),
                     GREATEST(%(max_gate)s, %(radius)s)), false)
                WHERE a.id = ANY(%(ids)s) AND a.status NOT IN ('repaired', 'dismissed')
                  AND b.status NOT IN ('repaired', 'dismissed')
                  AND (%(view_s)s <= 0 OR a.line IS NOT NULL OR NOT EXISTS (
                      SELECT 1 FROM sightings x JOIN sightings y ON y.defect_id = b.id
                      WHERE x.defect_id = a.id AND {SEEN_APART}))) p
            ORDER BY drop_id, dist""", {"radius": cfg.merge_radius_m, "gate": cfg.accuracy_gate,
                                        "max_gate": cfg.max_gate_m, "max_line": cfg.max_line_m,
                                        "max_turn": cfg.max_crack_turn_deg,
                                        "ids": sorted(pending), "view_s": cfg.same_view_s,
                                        "split_m": cfg.same_view_split_m}).fetchall()
        if not pairs:
            break
        dropped: set[int] = set()
        pending = set()
        ranks = _ranks(conn, {i for pair in pairs for i in pair})
        for a, b in pairs:
            if a in dropped or b in dropped:
                continue
            keep_id, drop_id = (a, b) if ranks[a] >= ranks[b] else (b, a)
            _fold(conn, keep_id, drop_id, ranks)
            dropped.add(drop_id)
            pending.add(keep_id)
        refresh(conn, pending, cfg)
        changed |= pending
    return (changed | set(defect_ids)) - _deleted(conn, defect_ids | changed)


# Which of two defects of one pothole survives a merge: the one a manager has acted on, so that the id on a work
# order stays the defect's id (a merge once deleted a `scheduled` defect with its history). Scheduled first, then
# any with a manager's entry in its history, then the older one.
_MANAGED_FIRST = {"scheduled": 2}


def _ranks(conn: psycopg.Connection, ids: set[int]) -> dict[int, tuple[int, int, int]]:
    rows = conn.execute("""
        SELECT d.id, d.status, EXISTS (SELECT 1 FROM defect_history h WHERE h.defect_id = d.id
                                       AND h.actor <> 'aggregator')
        FROM defects d WHERE d.id = ANY(%s)""", (sorted(ids),)).fetchall()
    return {i: (_MANAGED_FIRST.get(status, 0), int(managed), -i) for i, status, managed in rows}


def _fold(conn: psycopg.Connection, keep_id: int, drop_id: int, ranks: dict[int, tuple[int, int, int]]) -> None:
    """Move DROP_ID's sightings, misses and history to KEEP_ID, note the merge in both, delete DROP_ID."""
    conn.execute("UPDATE sightings SET defect_id = %s WHERE defect_id = %s", (keep_id, drop_id))
    conn.execute("""INSERT INTO defect_misses (defect_id, coverage_id, device_id, started_at, ended_at, bearing_deg)
                    SELECT %s, coverage_id, device_id, started_at, ended_at, bearing_deg
                    FROM defect_misses WHERE defect_id = %s ON CONFLICT DO NOTHING""", (keep_id, drop_id))
    # A pass that missed one of the two but saw the other saw the merged defect: no miss of it (as in assign()).
    conn.execute("""DELETE FROM defect_misses m USING sightings s
                    WHERE m.defect_id = %(id)s AND s.defect_id = %(id)s AND s.device_id = m.device_id
                      AND s.captured_at BETWEEN m.started_at - %(slack)s AND m.ended_at + %(slack)s""",
                 {"id": keep_id, "slack": MISS_SLACK})
    kept, gone = (one_row(conn.execute("SELECT status FROM defects WHERE id = %s", (i,)))[0]
                  for i in (keep_id, drop_id))
    conn.execute("UPDATE defect_history SET defect_id = %s WHERE defect_id = %s", (keep_id, drop_id))
    conn.execute("INSERT INTO defect_history (defect_id, actor, from_status, to_status, note) "
                 "VALUES (%s, 'aggregator', %s, %s, %s)",
                 (keep_id, kept, kept, f"defect {drop_id} ({gone}) merged into this one: the same defect"))
    conn.execute("UPDATE defect_merges SET kept_id = %s WHERE kept_id = %s", (keep_id, drop_id))
    conn.execute("INSERT INTO defect_merges (dropped_id, kept_id) VALUES (%s, %s) "
                 "ON CONFLICT (dropped_id) DO UPDATE SET kept_id = excluded.kept_id", (drop_id, keep_id))
    conn.execute("DELETE FROM defects WHERE id = %s", (drop_id,))
    status, managed, age = ranks[keep_id]
    ranks[keep_id] = (status, max(managed, ranks[drop_id][1]), age)  # the history it took over is a manager's too
    log.info("defect %d merged into %d", drop_id, keep_id)


def _deleted(conn: psycopg.Connection, ids: set[int]) -> set[int]:
    have = {r[0] for r in conn.execute("SELECT id FROM defects WHERE id = ANY(%s)", (sorted(ids),))}
    return set(ids) - have


def aggregate_new(conn: psycopg.Connection, event_ids: list[str], matched: set[int], loose: list[str],
                  coverage_ids: list[str], cfg: AggregateConfig) -> None:
    """Everything aggregation does for one batch, inside its transaction (the caller took `lock_areas` (or
    `lock`) for the batch's sightings and coverage before it inserted and matched the sightings): EVENT_IDS are
    the new sightings, MATCHED the defects they joined on insert, LOOSE those that joined none, COVERAGE_IDS the
    new coverage records."""
    if not event_ids and not coverage_ids:
        return
    split = split_views(conn, event_ids, cfg)
    touched = matched | assign(conn, event_ids, loose + split, cfg)
    refresh(conn, touched, cfg)
    merge_neighbours(conn, touched, cfg)
    record_misses(conn, coverage_ids, cfg)
