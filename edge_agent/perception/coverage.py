"""Coverage records: the stretches the camera looked at, as the evidence that a defect has been repaired.

A record is a polyline of filtered vehicle positions, one every coverage_point_s, for at most
coverage_record_s, plus whether the detector was running and which model it was. A record closes early when
the detector starts or stops, or when the position is lost or jumps (the position filter reset: a new
segment); the next record starts at the last point of the previous one so that the line has no holes, except
after a lost or jumped position, where a line across the gap would claim road nobody drove.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from edge_agent.config.events import EventsConfig
from roadmon_contract.geodesy import distance_m
from roadmon_contract.ids import uuid7
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)

SCHEMA = "roadmon.coverage/1"
MIN_STEP_M = 0.5      # a parked vehicle adds no points
MAX_POINTS = 10_000   # the schema's limit on one line


def footprint_summary(polygon: list[tuple[float, float]], lateral_m: float = 0.0) -> dict[str, float] | None:
    """{near, far, half_width} metres of the camera's footprint polygon (forward, left)."""
    if not polygon:
        return None
    forwards = [f for f, _ in polygon]
    half = max(abs(left - lateral_m) for _, left in polygon)
    return {"near": round(min(forwards), 2), "far": round(max(forwards), 2), "half_width": round(half, 2)}


class CoverageRecorder:
    """Call `update` for every processed frame; finished records go to SINK (the outbox's add_coverage)."""

    def __init__(self, device_id: str, cfg: EventsConfig, sink: Callable[[dict[str, Any]], Any],
                 model_sha256: str | None, footprint: dict[str, float] | None = None) -> None:
        self.device_id = device_id
        self.cfg = cfg
        self.sink = sink
        self.model_sha256 = model_sha256
        self.footprint = footprint
        self.records = 0
        self._points: list[tuple[float, float]] = []   # (lon, lat)
        self._times: list[datetime] = []
        self._active: bool | None = None
        self._last_point_mono: float | None = None
        self._started_mono: float | None = None
        self._segment: int | None = None

    def update(self, t_mono: float, utc: datetime | None, pose: Any, detector_active: bool) -> None:
        if self._active is not None and detector_active != self._active:
            self.flush(keep_last=True)
        self._active = detector_active
        if pose is None or utc is None or pose.lat is None:
            if self._points:
                self.flush(keep_last=False)  # no position: the line stops here instead of jumping the gap
            return
        segment = getattr(pose, "segment", 0)
        if segment != self._segment and self._points:
            self.flush(keep_last=False)  # a jump reset the filter: an 11 km straight line was "driven" across it
        self._segment = segment
        if self._last_point_mono is not None and t_mono - self._last_point_mono < self.cfg.coverage_point_s:
            return
        point = (float(pose.lon), float(pose.lat))
        if self._points and distance_m(self._points[-1][1], self._points[-1][0], point[1], point[0]) < MIN_STEP_M:
            self._last_point_mono = t_mono
            return
        if not self._points:
            self._started_mono = t_mono
        self._points.append(point)
        self._times.append(utc)
        self._last_point_mono = t_mono
        started = t_mono if self._started_mono is None else self._started_mono
        if t_mono - started >= self.cfg.coverage_record_s or len(self._points) >= MAX_POINTS:
            self.flush(keep_last=True)

    def flush(self, keep_last: bool = False) -> dict[str, Any] | None:
        """Close the current record and hand it to the sink; None when it has fewer than two points."""
        record = None
        if len(self._points) >= 2:
            record = {
                "schema": SCHEMA,
                "coverage_id": str(uuid7()),
                "device_id": self.device_id,
                "started_at": utc_iso(self._times[0]),
                "ended_at": utc_iso(self._times[-1]),
                "line": [[round(lon, 7), round(lat, 7)] for lon, lat in self._points],
                "detector_active": bool(self._active),
                "model_sha256": self.model_sha256,
            }
            if self.footprint:
                record["footprint_m"] = self.footprint
            self.records += 1
            if self.sink(record) is False:
                log.warning("outbox refused coverage record %s", record["coverage_id"])
        last = (self._points[-1], self._times[-1]) if keep_last and self._points else None
        self._points, self._times = ([last[0]], [last[1]]) if last else ([], [])
        self._started_mono = self._last_point_mono if last else None
        return record
