"""Sightings -> defects: merge, position, counts, status (new -> confirmed -> likely_repaired).

Runs inside the ingest transaction, under a transaction-level advisory lock, so two ingest workers never
create two defects for one pothole at the same moment. Definitions:

- a sighting joins the nearest open defect of its class within `merge_radius_m` (widened to
  `accuracy_gate` x its h_accuracy_m, at most `max_gate_m`); `repaired` defects are closed, a new sighting
  there starts a new defect; `dismissed` ones still absorb sightings so a false positive stays dismissed;
- a pass is a run of one device's sightings with no gap longer than `pass_gap_s`;
- a miss is a coverage record (detector active) whose footprint covered the defect after its last sighting
  while the same device reported no sighting of it in that time.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import psycopg

from fleet_server.config import AggregateConfig

log = logging.getLogger(__name__)
_LOCK_KEY = 0x526D4167
OPEN_FOR_MISSES = ("new", "confirmed", "scheduled", "likely_repaired")
AUTO_STATES = ("new", "confirmed", "likely_repaired")  # states the aggregator may change by itself
MISS_SLACK = timedelta(seconds=30)
EARTH_M_PER_DEG = 111_320.0


def lock(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))


def _gate_sql() -> str:
    return "LEAST(GREATEST(%(radius)s, %(gate)s * s.h_accuracy_m), GREATEST(%(max_gate)s, %(radius)s))"


def assign(conn: psycopg.Connection, event_ids: list[str], cfg: AggregateConfig) -> set[int]:
    """Give each new sighting a defect; returns the defects touched."""
    if not event_ids:
        return set()
    params = {"ids": event_ids, "radius": cfg.merge_radius_m, "gate": cfg.accuracy_gate,
              "max_gate": cfg.max_gate_m}
    touched = {row[0] for row in conn.execute(f"""
        UPDATE sightings t SET defect_id = m.id FROM (
            SELECT s.event_id, d.id FROM sightings s CROSS JOIN LATERAL (
                SELECT d.id FROM defects d
                WHERE d.class = s.class AND d.status <> 'repaired' AND ST_DWithin(d.geom, s.geom, {_gate_sql()})
                ORDER BY d.geom <-> s.geom LIMIT 1) d
            WHERE s.event_id = ANY(%(ids)s::uuid[])) m
        WHERE t.event_id = m.event_id RETURNING t.defect_id""", params)}
    # Sightings with no defect yet: one at a time, in capture order, so the first of a new pothole
    # creates it and the next ones of the same batch join it.
    loose = conn.execute("""SELECT event_id FROM sightings WHERE event_id = ANY(%s::uuid[]) AND defect_id IS NULL
                            ORDER BY captured_at""", (event_ids,)).fetchall()
    for (event_id,) in loose:
        params["id"] = event_id
        row = conn.execute(f"""
            SELECT d.id FROM sightings s JOIN defects d
              ON d.class = s.class AND d.status <> 'repaired' AND ST_DWithin(d.geom, s.geom, {_gate_sql()})
            WHERE s.event_id = %(id)s ORDER BY d.geom <-> s.geom LIMIT 1""", params).fetchone()
        if row is None:
            row = conn.execute("""
                INSERT INTO defects (class, geom, h_accuracy_m, first_seen, last_seen, sighting_count, vehicle_count,
                                     pass_count, severity, confidence, size_width_m, size_length_m)
                SELECT class, geom, h_accuracy_m, captured_at, captured_at, 1, 1, 1, severity, confidence,
                       size_width_m, size_length_m
                FROM sightings WHERE event_id = %s RETURNING id""", (event_id,)).fetchone()
        conn.execute("UPDATE sightings SET defect_id = %s WHERE event_id = %s", (row[0], event_id))
        touched.add(row[0])
    # A pass that saw the defect is no miss, even when its coverage record arrived before its event.
    conn.execute("""
        DELETE FROM defect_misses m USING sightings s
        WHERE s.event_id = ANY(%s::uuid[]) AND m.defect_id = s.defect_id AND m.device_id = s.device_id
          AND s.captured_at BETWEEN m.started_at - %s AND m.ended_at + %s""", (event_ids, MISS_SLACK, MISS_SLACK))
    return touched


@dataclass
class Sighting:
    lat: float
    lon: float
    h: float
    device: str
    at: datetime
    severity: float | None
    confidence: float
    width: float | None
    length: float | None


def robust_position(rows: list[Sighting], outlier_sigma: float) -> tuple[float, float, float]:
    """(lat, lon, accuracy_m): mean weighted by 1/h^2, re-done without sightings far outside their accuracy."""
    lat = np.array([r.lat for r in rows])
    lon = np.array([r.lon for r in rows])
    h = np.maximum(np.array([r.h for r in rows]), 0.1)
    w = 1.0 / h**2
    keep = np.ones(len(rows), dtype=bool)
    for _ in range(3):
        mlat = np.average(lat[keep], weights=w[keep])
        mlon = np.average(lon[keep], weights=w[keep])
        dy = (lat - mlat) * EARTH_M_PER_DEG
        dx = (lon - mlon) * EARTH_M_PER_DEG * math.cos(math.radians(mlat))
        dist = np.hypot(dx, dy)
        new_keep = dist <= outlier_sigma * np.maximum(h, 1.0)
        if new_keep.sum() < max(1, len(rows) // 2) or (new_keep == keep).all():
            break
        keep = new_keep
    accuracy = float(1.0 / math.sqrt(w[keep].sum()))
    return float(mlat), float(mlon), accuracy


def count_passes(rows: Iterable[Sighting], gap_s: float) -> int:
    passes = 0
    last: dict[str, datetime] = {}
    for r in sorted(rows, key=lambda r: (r.device, r.at)):
        prev = last.get(r.device)
        if prev is None or (r.at - prev).total_seconds() > gap_s:
            passes += 1
        last[r.device] = r.at
    return passes


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def refresh(conn: psycopg.Connection, defect_ids: set[int], cfg: AggregateConfig) -> None:
    """Recompute position, counts and automatic status of DEFECT_IDS from their sightings and misses."""
    if not defect_ids:
        return
    ids = sorted(defect_ids)
    by_defect: dict[int, list[Sighting]] = defaultdict(list)
    for row in conn.execute("""
            SELECT defect_id, ST_Y(geom::geometry), ST_X(geom::geometry), h_accuracy_m, device_id, captured_at,
                   severity, confidence, size_width_m, size_length_m
            FROM sightings WHERE defect_id = ANY(%s) ORDER BY captured_at DESC""", (ids,)):
        by_defect[row[0]].append(Sighting(*row[1:]))
    updates = []
    for defect_id in ids:
        rows = by_defect.get(defect_id)
        if not rows:
            continue
        recent = rows[: cfg.max_sightings_for_position]
        lat, lon, acc = robust_position(recent, cfg.outlier_sigma)
        updates.append((lon, lat, acc, min(r.at for r in rows), max(r.at for r in rows), len(rows),
                        len({r.device for r in rows}), count_passes(rows, cfg.pass_gap_s),
                        _median([r.severity for r in recent]), max(r.confidence for r in recent),
                        _median([r.width for r in recent]), _median([r.length for r in recent]), defect_id))
    with conn.cursor() as cur:
        cur.executemany("""
            UPDATE defects SET geom = ST_SetSRID(ST_MakePoint(%s, %s), 4326)::geography, h_accuracy_m = %s,
                   first_seen = %s, last_seen = %s, sighting_count = %s, vehicle_count = %s, pass_count = %s,
                   severity = %s, confidence = %s, size_width_m = %s, size_length_m = %s, updated_at = now()
            WHERE id = %s""", updates)
    update_status(conn, ids, cfg)


def record_misses(conn: psycopg.Connection, coverage_ids: list[str], cfg: AggregateConfig) -> set[int]:
    """Add a miss for every open defect a new coverage record looked at without seeing it."""
    if not coverage_ids:
        return set()
    rows = conn.execute("""
        INSERT INTO defect_misses (defect_id, coverage_id, device_id, started_at, ended_at)
        SELECT d.id, c.coverage_id, c.device_id, c.started_at, c.ended_at
        FROM coverage c JOIN defects d
          ON ST_DWithin(d.geom, c.line, COALESCE(c.half_width_m, %(hw)s))
        WHERE c.coverage_id = ANY(%(ids)s::uuid[]) AND c.detector_active
          AND d.status = ANY(%(open)s) AND d.last_seen < c.started_at
          AND NOT EXISTS (SELECT 1 FROM sightings s WHERE s.defect_id = d.id AND s.device_id = c.device_id
                          AND s.captured_at BETWEEN c.started_at - %(slack)s AND c.ended_at + %(slack)s)
        ON CONFLICT DO NOTHING RETURNING defect_id""",
                        {"hw": cfg.footprint_half_width_m, "ids": coverage_ids, "open": list(OPEN_FOR_MISSES),
                         "slack": MISS_SLACK}).fetchall()
    touched = {r[0] for r in rows}
    update_status(conn, sorted(touched), cfg)
    return touched


def update_status(conn: psycopg.Connection, ids: list[int], cfg: AggregateConfig) -> None:
    """The automatic transitions, each written to defect_history by 'aggregator'."""
    if not ids:
        return
    conn.execute("SELECT id FROM defects WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
    rows = conn.execute("""
        SELECT d.id, d.status, d.sighting_count, d.pass_count, count(m.coverage_id), count(DISTINCT m.device_id)
        FROM defects d LEFT JOIN defect_misses m ON m.defect_id = d.id AND m.started_at > d.last_seen
        WHERE d.id = ANY(%s) GROUP BY d.id""", (ids,)).fetchall()
    for defect_id, status, sightings, passes, misses, miss_vehicles in rows:
        repaired = misses >= cfg.repair_misses and miss_vehicles >= cfg.repair_vehicles
        confirmed = sightings >= cfg.confirm_sightings and passes >= cfg.confirm_passes
        target = status
        if status in ("new", "confirmed", "scheduled") and repaired:
            target = "likely_repaired"
        elif status == "likely_repaired" and not repaired:
            target = "confirmed" if confirmed else "new"  # seen again
        elif status == "new" and confirmed:
            target = "confirmed"
        conn.execute("UPDATE defects SET miss_count = %s WHERE id = %s", (misses, defect_id))
        if target != status:
            set_status(conn, defect_id, status, target, "aggregator",
                       f"{sightings} sightings in {passes} passes; {misses} misses from {miss_vehicles} vehicles")


def set_status(conn: psycopg.Connection, defect_id: int, old: str | None, new: str, actor: str,
               note: str | None) -> None:
    conn.execute("UPDATE defects SET status = %s, status_changed_at = now(), updated_at = now() WHERE id = %s",
                 (new, defect_id))
    conn.execute("INSERT INTO defect_history (defect_id, actor, from_status, to_status, note) "
                 "VALUES (%s, %s, %s, %s, %s)", (defect_id, actor, old, new, note))


def merge_neighbours(conn: psycopg.Connection, defect_ids: set[int], cfg: AggregateConfig) -> set[int]:
    """Fold defects that lie within each other's gate (the merge radius, widened by their combined accuracy)
    into the older one. Early sightings can start two defects for one pothole before the positions settle;
    this undoes that.
    Returns the surviving defects that changed.
    """
    changed: set[int] = set()
    pending = set(defect_ids)
    for _ in range(10):
        if not pending:
            break
        pairs = conn.execute("""
            SELECT DISTINCT ON (drop_id) keep_id, drop_id FROM (
                SELECT LEAST(a.id, b.id) AS keep_id, GREATEST(a.id, b.id) AS drop_id, a.geom <-> b.geom AS dist
                FROM defects a JOIN defects b
                  ON b.class = a.class AND b.id <> a.id AND ST_DWithin(a.geom, b.geom, LEAST(GREATEST(%(radius)s,
                     %(gate)s * sqrt(coalesce(a.h_accuracy_m, 0) ^ 2 + coalesce(b.h_accuracy_m, 0) ^ 2)),
                     GREATEST(%(max_gate)s, %(radius)s)))
                WHERE a.id = ANY(%(ids)s) AND a.status NOT IN ('repaired', 'dismissed')
                  AND b.status NOT IN ('repaired', 'dismissed')) p
            ORDER BY drop_id, dist""", {"radius": cfg.merge_radius_m, "gate": cfg.accuracy_gate,
                                        "max_gate": cfg.max_gate_m, "ids": sorted(pending)}).fetchall()
        if not pairs:
            break
        dropped: set[int] = set()
        pending = set()
        for keep_id, drop_id in pairs:
            if keep_id in dropped or drop_id in dropped:
                continue
            conn.execute("UPDATE sightings SET defect_id = %s WHERE defect_id = %s", (keep_id, drop_id))
            conn.execute("""INSERT INTO defect_misses SELECT %s, coverage_id, device_id, started_at, ended_at
                            FROM defect_misses WHERE defect_id = %s ON CONFLICT DO NOTHING""", (keep_id, drop_id))
            conn.execute("DELETE FROM defects WHERE id = %s", (drop_id,))
            log.info("defect %d merged into %d", drop_id, keep_id)
            dropped.add(drop_id)
            pending.add(keep_id)
        refresh(conn, pending, cfg)
        changed |= pending
    return (changed | set(defect_ids)) - _deleted(conn, defect_ids | changed)


def _deleted(conn: psycopg.Connection, ids: set[int]) -> set[int]:
    have = {r[0] for r in conn.execute("SELECT id FROM defects WHERE id = ANY(%s)", (sorted(ids),))}
    return set(ids) - have


def aggregate_new(conn: psycopg.Connection, event_ids: list[str], coverage_ids: list[str],
                  cfg: AggregateConfig) -> None:
    """Everything aggregation does for one committed batch (call inside its transaction)."""
    if not event_ids and not coverage_ids:
        return
    lock(conn)
    touched = assign(conn, event_ids, cfg)
    refresh(conn, touched, cfg)
    merge_neighbours(conn, touched, cfg)
    record_misses(conn, coverage_ids, cfg)
