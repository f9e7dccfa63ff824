"""Stores one batch of validated messages in ONE transaction, idempotently on event_id / coverage_id.

Shared by the MQTT ingest workers and POST /api/v1/detections, so both paths write the same rows.
The caller publishes acks only after `store_batch` returned (the transaction is committed by then).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import pairwise
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from fleet_server import aggregate, metrics
from fleet_server.config import AggregateConfig
from fleet_server.device_view import CLOCK_OFF_S
from fleet_server.validate import Rejection, class_name, parse_utc


@dataclass
class Batch:
    events: list[tuple[dict, datetime]] = field(default_factory=list)      # (event, received_at)
    coverage: list[tuple[dict, datetime]] = field(default_factory=list)
    statuses: list[tuple[str, dict, datetime]] = field(default_factory=list)  # (device, status, received_at)
    results: list[tuple[str, str, Any]] = field(default_factory=list)       # (device, command name, payload)
    rejected: list[Rejection] = field(default_factory=list)
    source: str = "mqtt"
    # event_id -> the JSON text of the FIRST message with that id, as received (a later one with the same id is
    # a repeat or a clash, never its replacement: see _first_of_each)
    raw: dict[str, str] = field(default_factory=dict)
    # event_id / coverage_id -> what the caller needs to acknowledge it (the MQTT deliveries that carried it)
    origin: dict[str, list] = field(default_factory=dict)
    deferred_at: dict[str, float] = field(default_factory=dict)  # id -> when it was first deferred (monotonic)

    def __len__(self) -> int:
        return len(self.events) + len(self.coverage) + len(self.statuses) + len(self.results) + len(self.rejected)

    def extend(self, other: Batch) -> None:
        """Add OTHER's messages (same source) to this batch."""
        self.events += other.events
        self.coverage += other.coverage
        self.statuses += other.statuses
        self.results += other.results
        self.rejected += other.rejected
        for key, text in other.raw.items():
            self.raw.setdefault(key, text)
        for key, items in other.origin.items():
            self.origin.setdefault(key, []).extend(items)
        self.deferred_at.update(other.deferred_at)


@dataclass
class Stored:
    new_events: set[str] = field(default_factory=set)
    new_coverage: set[str] = field(default_factory=set)
    acks: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # device -> {event_ids, coverage_ids}
    conflicts: list[Rejection] = field(default_factory=list)  # event_ids already stored with other content
    deferred: Batch | None = None  # events and coverage left for a later batch: their areas were busy

    @property
    def duplicates(self) -> int:
        return sum(len(a["event_ids"]) for a in self.acks.values()) - len(self.new_events)


MEDIA = ("thumbnail_jpeg_b64", "frame_jpeg_b64")  # not part of the stored payload


def _content(event: dict) -> dict:
    """EVENT as its stored payload (without media): what a re-sent event must equal to count as the same."""
    return {k: v for k, v in event.items() if k not in MEDIA}


def event_row(event: dict, received_at: datetime, source: str) -> dict:
    """The sightings columns of EVENT (used by the benchmark's bare COPY of the same rows)."""
    pos, veh = event["position"], event["vehicle"]
    slim = _content(event)
    return {
        "event_id": event["event_id"], "device_id": event["device_id"], "seq": event["seq"],
        "captured_at": event["captured_at"], "received_at": received_at.isoformat(), "source": source,
        "class": class_name(event["class"]), "confidence": event["confidence"],
        "lat": pos["lat"], "lon": pos["lon"], "h": pos["h_accuracy_m"],
        "vlat": veh["lat"], "vlon": veh["lon"], "vh": veh["h_accuracy_m"],
        "speed": veh.get("speed_mps"), "heading": veh.get("heading_deg"),
        "width": event["size_m"]["width"], "length": event["size_m"]["length"], "severity": event["severity"],
        "frames": event["frames"], "bbox": event["bbox"], "model": event["model"],
        "thumb": event.get("thumbnail_jpeg_b64"), "payload": slim,
    }


# The events travel to PostgreSQL as one JSON array of the messages as received (no re-encoding in Python);
# the columns are taken out of it in SQL. Each new sighting joins the nearest open defect of its class within
# its gate as it is inserted (so its row is written once); those that match none get a defect from the
# aggregator afterwards. Distances use the sphere (use_spheroid false): faster, and millimetres apart from the
# spheroid at these ranges.
INSERT_EVENTS = """
WITH incoming AS (  -- class: the message's class folded to its one spelling (validate.class_name)
    SELECT e.p, t.received_at, t.class
    FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS e(p, n)
    JOIN unnest(%(received)s::text::timestamptz[], %(classes)s::text[]) WITH ORDINALITY AS t(received_at, class, n)
      USING (n)
), r AS (
    SELECT (p->>'event_id')::uuid AS event_id, p->>'device_id' AS device_id, (p->>'seq')::bigint AS seq,
           (p->>'captured_at')::timestamptz AS captured_at, received_at, class,
           (p->>'confidence')::real AS confidence,
           ST_SetSRID(ST_MakePoint((p->'position'->>'lon')::float8, (p->'position'->>'lat')::float8), 4326)
             ::geography AS geog,
           (p->'position'->>'h_accuracy_m')::real AS h,
           ST_SetSRID(ST_MakePoint((p->'vehicle'->>'lon')::float8, (p->'vehicle'->>'lat')::float8), 4326)
             ::geography AS vgeog,
           (p->'vehicle'->>'h_accuracy_m')::real AS vh, (p->'vehicle'->>'speed_mps')::real AS speed,
           (p->'vehicle'->>'heading_deg')::real AS heading,
           -- A sighting that was not projected onto the road (a phone's) has no size: NULL, which the
           -- aggregator's medians leave out.
           CASE WHEN projected THEN (p->'size_m'->>'width')::real END AS width,
           CASE WHEN projected THEN (p->'size_m'->>'length')::real END AS length,
           CASE WHEN projected THEN (p->>'severity')::real END AS severity,
           (p->>'frames')::integer AS frames,
           ARRAY(SELECT b::real FROM jsonb_array_elements_text(p->'bbox') AS b) AS bbox, p->'model' AS model,
           decode(p->>'thumbnail_jpeg_b64', 'base64') AS thumbnail,
           CASE WHEN p ?| ARRAY['thumbnail_jpeg_b64', 'frame_jpeg_b64'] THEN p - 'thumbnail_jpeg_b64' - 'frame_jpeg_b64'
                ELSE p END AS payload  -- (each '-' copies the object)
    FROM incoming, LATERAL (SELECT coalesce((p->>'ground_projected')::boolean, true) AS projected) g
), r_axis AS (  -- a line's (a crack's) long axis: LENGTH along orientation_deg, centred on its position
    SELECT r.*, CASE WHEN p_orient IS NOT NULL AND r.length > 0 THEN ST_MakeLine(
               ST_Project(r.geog, r.length / 2, radians(p_orient + 180))::geometry,
               ST_Project(r.geog, r.length / 2, radians(p_orient))::geometry)::geography END AS axis
    FROM (SELECT *, (payload->'size_m'->>'orientation_deg')::float8 AS p_orient FROM r) r
)
INSERT INTO sightings (event_id, device_id, seq, captured_at, received_at, source, class, confidence, geom,
                       h_accuracy_m, vehicle_geom, vehicle_h_accuracy_m, speed_mps, heading_deg, size_width_m,
                       size_length_m, severity, frames, bbox, model, thumbnail, payload, axis, defect_id)
SELECT r.event_id, r.device_id, r.seq, r.captured_at, r.received_at, %(source)s, r.class, r.confidence, r.geog,
       r.h, r.vgeog, r.vh, r.speed, r.heading, r.width, r.length, r.severity, r.frames, r.bbox, r.model,
       r.thumbnail, r.payload, r.axis, m.id
FROM r_axis r LEFT JOIN LATERAL (
    -- A sighting joins a defect within its gate of the defect's extent: its point, or anywhere along its line
    -- (a crack). A gate on the markers alone kept an area crack (no orientation) off a long crack whose marker
    -- lay 20-40 m away, however close to the line; with no bound on them, pieces 8 m apart grew one line to
    -- 1 km with its marker 500 m from either end. So: the extent within the gate, the marker within max_line_m.
    SELECT d.id FROM defects d
    WHERE d.class = r.class AND d.status <> 'repaired'
      AND ST_DWithin(d.geom, r.geog, GREATEST(%(max_gate)s, %(radius)s) + %(max_line)s, false)
      -- a crack crossing a crack defect is its own (a transverse one took a longitudinal one's line over)
      AND (r.axis IS NULL OR d.line IS NULL
           OR roadmon_axial_turn(r.p_orient, roadmon_line_bearing(d.line)) <= %(max_turn)s)
      AND ST_DWithin(coalesce(d.line, d.geom), coalesce(r.axis, r.geog),
                     LEAST(GREATEST(%(radius)s, %(gate)s * r.h), GREATEST(%(max_gate)s, %(radius)s)), false)
    ORDER BY coalesce(d.line, d.geom) <-> coalesce(r.axis, r.geog) LIMIT 1) m ON true
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id::text, defect_id
"""

INSERT_COVERAGE = """
INSERT INTO coverage (coverage_id, device_id, started_at, ended_at, received_at, line, detector_active,
                      model_sha256, half_width_m, payload)
SELECT r.coverage_id, r.device_id, r.started_at, r.ended_at, r.received_at,
       ST_SetSRID(ST_GeomFromGeoJSON(jsonb_build_object('type', 'LineString', 'coordinates', r.line)), 4326)
         ::geography,
       r.detector_active, r.model_sha256, r.half_width, r.payload
FROM jsonb_to_recordset(%s::jsonb) AS r(
    coverage_id uuid, device_id text, started_at timestamptz, ended_at timestamptz, received_at timestamptz,
    line jsonb, detector_active boolean, model_sha256 text, half_width real, payload jsonb)
ON CONFLICT (coverage_id) DO NOTHING
RETURNING coverage_id::text
"""

# Devices seen in a batch. Every batch used to upsert last_seen of all its devices, so concurrent workers queued
# on those row locks until each other's commit (~90 % of their samples at 2 workers). Now a device row is
# inserted once (DO NOTHING takes no lock on an existing row), and last_seen is moved forward only when older
# than ingest.last_seen_resolution_s, skipping rows another transaction holds: that one is writing it anyway.
INSERT_DEVICES = """
INSERT INTO devices (id, last_seen)
SELECT i, now() FROM unnest(%s::text[]) AS i WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = i)
ON CONFLICT (id) DO NOTHING
"""

TOUCH_DEVICES = """
UPDATE devices d SET last_seen = now()
FROM (SELECT id FROM devices WHERE id = ANY(%s) AND (last_seen IS NULL OR last_seen < now() - make_interval(secs => %s))
      ORDER BY id FOR UPDATE SKIP LOCKED) s
WHERE d.id = s.id
"""

# A Last Will (the broker's "offline" for a box that vanished: {state, device_id, version}, no sent_at) replaced
# the box's last status whole, so an offline van lost its last known problems and position. It now only
# changes the state; state_at, the last status's time of arrival (its clock offset is judged on it), stays.
UPDATE_STATUS = """
UPDATE devices SET state = %(state)s, last_seen = now(),
       state_at = CASE WHEN %(will)s THEN state_at ELSE now() END,
       last_status = CASE WHEN %(will)s THEN coalesce(last_status, '{}'::jsonb) || %(status)s ELSE %(status)s END,
       queue_depth = CASE WHEN %(will)s THEN queue_depth ELSE %(queue_depth)s END,
       inference_ms = CASE WHEN %(will)s THEN inference_ms ELSE %(inference_ms)s END,
       last_fix = CASE WHEN %(will)s OR %(island)s THEN last_fix ELSE %(fix)s END
WHERE id = %(device)s
"""


def _coverage_row(cov: dict, received_at: datetime) -> dict:
    footprint = cov.get("footprint_m") or {}
    return {
        "coverage_id": cov["coverage_id"], "device_id": cov["device_id"], "started_at": cov["started_at"],
        "ended_at": cov["ended_at"], "received_at": received_at.isoformat(), "line": cov["line"],
        "detector_active": cov["detector_active"], "model_sha256": cov.get("model_sha256"),
        "half_width": footprint.get("half_width"), "payload": cov,
    }


@dataclass(frozen=True)
class RejectPolicy:
    """How much of what devices send wrong is kept: a dead letter is for diagnosis, not an archive."""

    keep_bytes: int = 4096          # raw bytes kept per rejected message (the rest is cut off)
    per_device_hour: int = 100      # rejected rows kept per device per hour; the rest only counted


def store_rejected(conn: psycopg.Connection, rejected: list[Rejection], policy: RejectPolicy = RejectPolicy()) -> int:
    """Insert REJECTED as dead letters, truncated and capped per device per hour; returns how many were left
    out by the cap (counted in road_ingest_rejected_dropped)."""
    if not rejected:
        return 0
    devices = sorted({r.device_id for r in rejected if r.device_id is not None})
    used: dict[str | None, int] = dict(conn.execute(
        "SELECT device_id, count(*) FROM rejected WHERE (device_id = ANY(%s) OR device_id IS NULL) "
        "AND received_at > now() - interval '1 hour' GROUP BY device_id", (devices,)).fetchall())
    kept: list[Rejection] = []
    for r in rejected:
        n = used.get(r.device_id, 0)
        if n < policy.per_device_hour:
            used[r.device_id] = n + 1
            kept.append(r)
    dropped = len(rejected) - len(kept)
    if dropped:
        metrics.INGEST_REJECTED_DROPPED.inc(dropped)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO rejected (source, topic, device_id, reason, raw) VALUES (%s, %s, %s, %s, %s)",
                        [(r.source, _text(r.topic), _text(r.device_id), _text(r.reason[:2000]),
                          r.raw[:policy.keep_bytes]) for r in kept])
    return dropped


def purge_rejected(conn: psycopg.Connection, retention_days: float) -> int:
    """Delete dead letters older than RETENTION_DAYS; returns how many."""
    cur = conn.execute("DELETE FROM rejected WHERE received_at < now() - make_interval(secs => %s)",
                       (retention_days * 86400.0,))
    return cur.rowcount


def _text(value: str | None) -> str | None:
    # PostgreSQL text refuses NUL; a reason or topic may quote one from the message.
    return None if value is None else value.replace("\x00", "\\0")


def store_batch(conn: psycopg.Connection, batch: Batch, agg: AggregateConfig,
                reject: RejectPolicy = RejectPolicy(), last_seen_resolution_s: float = 30.0,
                defer_busy_s: float = 0.0) -> Stored:
    """Write BATCH and aggregate its new sightings, all in one committed transaction. DEFER_BUSY_S > 0: events
    and coverage whose map areas another transaction holds are not stored but returned in `Stored.deferred`,
    for the caller's next batch, until the first of them has been deferred that long (then the transaction
    waits for the areas, so none waits forever); 0: the transaction waits for busy areas."""
    out = Stored()
    acks: dict[str, dict[str, list[str]]] = defaultdict(empty_ack)
    matched: set[int] = set()
    loose: list[str] = []
    batch, repeats = _first_of_each(batch)
    with conn.transaction():
        devices = sorted({e["device_id"] for e, _ in batch.events} | {c["device_id"] for c, _ in batch.coverage}
                         | {d for d, _, _ in batch.statuses} | {d for d, _, _ in batch.results})
        if devices:
            conn.execute(INSERT_DEVICES, (devices,))
            conn.execute(TOUCH_DEVICES, (devices, last_seen_resolution_s))
            batch = drop_revoked(conn, batch, devices)
        if batch.events or batch.coverage:
            # Before the insert: it matches sightings to defects that a concurrent worker's aggregation may be
            # merging away; holding the locks of the batch's areas from here on avoids that race (and its
            # deadlock), while workers busy elsewhere on the map go on.
            if defer_busy_s > 0 and time.monotonic() - min(batch.deferred_at.values(), default=math.inf) < defer_busy_s:
                batch, out.deferred = _take_free_areas(conn, batch, agg)
            else:
                aggregate.lock_areas(conn, [(e["position"]["lat"], e["position"]["lon"]) for e, _ in batch.events],
                                     [box for c, _ in batch.coverage for box in _segment_boxes(c["line"])], agg)
        if batch.events:
            texts = [batch.raw.get(e["event_id"]) or json.dumps(e) for e, _ in batch.events]
            inserted = conn.execute(INSERT_EVENTS, {
                "events": "[" + ",".join(texts) + "]", "received": _timestamp_array([at for _, at in batch.events]),
                "classes": [class_name(e["class"]) for e, _ in batch.events], "source": batch.source,
                "radius": agg.merge_radius_m, "gate": agg.accuracy_gate, "max_gate": agg.max_gate_m,
                "max_line": agg.max_line_m, "max_turn": agg.max_crack_turn_deg}).fetchall()
            out.new_events = {r[0] for r in inserted}
            matched = {r[1] for r in inserted if r[1] is not None}
            loose = [r[0] for r in inserted if r[1] is None]
            out.conflicts = _conflicting(conn, batch, out.new_events)
            if ahead := _dated_ahead(batch, out.new_events):
                conn.execute(DATED_AHEAD, (list(ahead), list(ahead.values())))
            clashing = {r.ref for r in out.conflicts}
            for e, _ in batch.events:
                if e["event_id"] not in clashing:
                    acks[e["device_id"]]["event_ids"].append(e["event_id"])
        out.conflicts += repeats  # after the acks: the first of their id is acked (when it was stored)
        if batch.coverage:
            rows = [_coverage_row(c, at) for c, at in batch.coverage]
            out.new_coverage = {r[0] for r in conn.execute(INSERT_COVERAGE, (json.dumps(rows),)).fetchall()}
            for c, _ in batch.coverage:
                acks[c["device_id"]]["coverage_ids"].append(c["coverage_id"])
        with conn.cursor() as cur:
            if batch.statuses:
                cur.executemany(UPDATE_STATUS, [_status_params(d, s) for d, s, _ in batch.statuses])
            if batch.results:
                # A box sends a result again until the server acks its command_id (one sent while no ingest
                # worker was connected was lost): the same result twice is stored once.
                cur.executemany("""INSERT INTO command_results (device_id, name, payload) SELECT %(d)s, %(n)s, %(p)s
                                   WHERE NOT EXISTS (SELECT 1 FROM command_results
                                                     WHERE device_id = %(d)s AND name = %(n)s AND payload = %(p)s)""",
                                [{"d": d, "n": n, "p": Jsonb(p)} for d, n, p in batch.results])
                for d, _, p in batch.results:
                    if isinstance(p, dict) and isinstance(p.get("command_id"), str):
                        acks[d]["command_ids"].append(p["command_id"])
        store_rejected(conn, batch.rejected + out.conflicts, reject)
        aggregate.aggregate_new(conn, sorted(out.new_events), matched, loose, sorted(out.new_coverage), agg)
    out.acks = {d: {k: list(dict.fromkeys(v)) for k, v in a.items()} for d, a in acks.items()}
    return out


CLASH = "event_id already used by an event with other content"


def empty_ack() -> dict[str, list[str]]:
    """A device's ack before ids are added. command_ids always, even empty: it tells an agent that this server
    acks command results, so that the agent may send one again until it is acked."""
    return {"event_ids": [], "coverage_ids": [], "command_ids": []}


DATED_AHEAD = """
UPDATE devices d SET dated_ahead_s = a.s, dated_ahead_at = now()
FROM unnest(%s::text[], %s::real[]) AS a(id, s) WHERE d.id = a.id
"""


def _dated_ahead(batch: Batch, new_events: set[str]) -> dict[str, float]:
    """Devices whose new sightings were dated more than device_view.CLOCK_OFF_S after their arrival, with the
    most: a clock or a time zone set wrong (rare, so their rows are written only then)."""
    ahead: dict[str, float] = {}
    for event, received_at in batch.events:
        if event["event_id"] not in new_events:
            continue
        seconds = (parse_utc(event["captured_at"]) - received_at).total_seconds()  # validated: it parses
        if seconds > CLOCK_OFF_S:
            ahead[event["device_id"]] = max(seconds, ahead.get(event["device_id"], 0.0))
    return ahead


def _first_of_each(batch: Batch) -> tuple[Batch, list[Rejection]]:
    """(BATCH with each event_id once, rejections). The first message of an id is the one stored, as across
    batches: a later one with the same content is a repeat (acked with the first), one with other content a
    rejection saying so, never a silent replacement."""
    first: dict[str, dict] = {}
    kept: list[tuple[dict, datetime]] = []
    clashes: list[Rejection] = []
    for e, at in batch.events:
        seen = first.setdefault(e["event_id"], e)
        if seen is e:
            kept.append((e, at))
        elif _content(seen) != _content(e):
            clashes.append(Rejection(batch.source, None, e["device_id"], CLASH, json.dumps(e).encode(), e["event_id"]))
    if len(kept) == len(batch.events):
        return batch, []
    return replace(batch, events=kept), clashes


# The stored payload is the message without its media; a re-sent event must equal it to count as the same.
CONFLICTING = """
SELECT e.p->>'event_id'
FROM jsonb_array_elements(%s::jsonb) AS e(p)
JOIN sightings s ON s.event_id = (e.p->>'event_id')::uuid
WHERE s.payload <> e.p - 'thumbnail_jpeg_b64' - 'frame_jpeg_b64'
"""


def _conflicting(conn: psycopg.Connection, batch: Batch, new_events: set[str]) -> list[Rejection]:
    """Rejections for events of BATCH whose event_id is already stored with other content: the first one
    stays, the other is a dead letter the device is told about (not acked as if it had been stored)."""
    repeated = [(e, batch.raw.get(e["event_id"]) or json.dumps(e)) for e, _ in batch.events
                if e["event_id"] not in new_events]
    if not repeated:
        return []
    clashing = {r[0] for r in conn.execute(CONFLICTING, ("[" + ",".join(t for _, t in repeated) + "]",))}
    return [Rejection(batch.source, None, e["device_id"], CLASH, text.encode(), e["event_id"])
            for e, text in repeated if e["event_id"] in clashing]


def _take_free_areas(conn: psycopg.Connection, batch: Batch, agg: AggregateConfig) -> tuple[Batch, Batch | None]:
    """(what of BATCH this transaction now holds the areas of, what it must leave for later or None). A batch
    spread over more cells than aggregate.max_area_locks waits for its (coarser) areas instead."""
    cells = (aggregate.point_cells([(e["position"]["lat"], e["position"]["lon"]) for e, _ in batch.events], agg)
             + [aggregate.area_cells([], _segment_boxes(c["line"]), agg) for c, _ in batch.coverage])
    if not aggregate.fits_fine(set().union(*cells), agg.max_area_locks):
        aggregate.lock_areas(conn, [(e["position"]["lat"], e["position"]["lon"]) for e, _ in batch.events],
                             [box for c, _ in batch.coverage for box in _segment_boxes(c["line"])], agg)
        return batch, None
    free = aggregate.try_lock_areas(conn, cells)
    if all(free):
        return batch, None
    n = len(batch.events)
    go = Batch(source=batch.source, raw=batch.raw, origin=batch.origin, statuses=batch.statuses,
               results=batch.results, rejected=batch.rejected)
    later = Batch(source=batch.source)
    for i, item in enumerate(batch.events):
        (go if free[i] else later).events.append(item)
    for i, item in enumerate(batch.coverage):
        (go if free[n + i] else later).coverage.append(item)
    for e, _ in later.events:
        _carry(batch, later, e["event_id"])
    for c, _ in later.coverage:
        _carry(batch, later, c["coverage_id"])
    metrics.INGEST_DEFERRED.inc(len(later.events) + len(later.coverage))
    return go, later


def _carry(batch: Batch, later: Batch, key: str) -> None:
    if key in batch.raw:
        later.raw[key] = batch.raw[key]
    if key in batch.origin:
        later.origin[key] = batch.origin[key]
    later.deferred_at[key] = batch.deferred_at.get(key, time.monotonic())


def _segment_boxes(line: list) -> list[tuple[float, float, float, float]]:
    """(min_lat, min_lon, max_lat, max_lon) of each segment of a coverage LINE ([[lon, lat], ...])."""
    pts = [(float(p[1]), float(p[0])) for p in line]
    if len(pts) == 1:
        pts = pts * 2
    return [(min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])) for a, b in pairwise(pts)]


def _timestamp_array(times: list[datetime]) -> str:
    """TIMES as a PostgreSQL array literal: parsed by the server in one go, where psycopg would dump each."""
    return "{" + ",".join(t.isoformat() for t in times) + "}"


def drop_revoked(conn: psycopg.Connection, batch: Batch, devices: list[str]) -> Batch:
    """BATCH without the messages of revoked devices, which become rejections instead. (The broker refuses a
    revoked login at its next connect; a session already open may still publish until then.)"""
    revoked = {r[0] for r in conn.execute("SELECT id FROM devices WHERE id = ANY(%s) AND revoked_at IS NOT NULL",
                                          (devices,))}
    if not revoked:
        return batch

    def reject(device: str, obj: dict, raw: str | None = None) -> Rejection:
        return Rejection(batch.source, None, device, "device revoked", (raw or json.dumps(obj)).encode())

    kept = Batch(source=batch.source, raw=batch.raw, rejected=list(batch.rejected), origin=batch.origin,
                 deferred_at=batch.deferred_at)
    for e, at in batch.events:
        if e["device_id"] in revoked:
            kept.rejected.append(reject(e["device_id"], e, batch.raw.get(e["event_id"])))
        else:
            kept.events.append((e, at))
    for c, at in batch.coverage:
        if c["device_id"] in revoked:
            kept.rejected.append(reject(c["device_id"], c))
        else:
            kept.coverage.append((c, at))
    for d, st, at in batch.statuses:
        if d in revoked:
            kept.rejected.append(reject(d, st))
        else:
            kept.statuses.append((d, st, at))
    kept.results = [r for r in batch.results if r[0] not in revoked]
    return kept


def _status_params(device: str, status: dict) -> dict:
    return {"device": device, "state": status["state"], "status": Jsonb(status),
            "will": status["state"] == "offline" and "sent_at" not in status,
            "queue_depth": status.get("queue_depth"), "inference_ms": status.get("inference_ms"),
            "fix": Jsonb(status["fix"]) if status.get("fix") is not None else None,
            "island": _null_island(status.get("fix"))}


def _null_island(fix: object) -> bool:
    """(0, 0): a receiver's placeholder before its first fix, not a place. One such van zoomed every manager's
    first map view out to the whole world (events there are refused; such a status keeps the last position)."""
    return isinstance(fix, dict) and fix.get("lat") == 0 and fix.get("lon") == 0
