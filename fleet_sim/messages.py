"""The agent's wire messages, built the way edge_agent/perception/events.py and coverage.py build them.

Same schemas (roadmon_contract/schemas), same ids (UUIDv7), same millisecond UTC times with a Z, same
rounding, the severity formula of edge_agent.perception.geolocate.severity, a crack's orientation in size_m,
and coverage records of one point every 2 s, at most 60 s each, consecutive ones sharing their joint point,
with the camera footprint. Thumbnails are left out (the agent's are optional and only cost bytes here).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from edge_agent.config.events import EventsConfig
from edge_agent.perception.geolocate import severity
from fleet_sim import calibration as cal
from fleet_sim.detection import Observation
from roadmon_contract.geodesy import LocalFrame
from roadmon_contract.ids import uuid7
from roadmon_contract.times import utc_iso

EVENTS = EventsConfig()  # the agent's defaults: class weights and severe_area_m2

MODEL = {"name": "fleet-sim-detector", "version": "calibrated-1",
         "sha256": hashlib.sha256(b"fleet_sim detection model").hexdigest()}


def build_event(obs: Observation, *, device_id: str, seq: int, frame: LocalFrame, epoch: datetime) -> dict[str, Any]:
    lat, lon = frame.to_geodetic(obs.east, obs.north)
    vlat, vlon = frame.to_geodetic(obs.vehicle_east, obs.vehicle_north)
    width, length = min(max(obs.width, 0.0), 50.0), min(max(obs.length, 0.0), 50.0)
    size: dict[str, float] = {"width": round(width, 2), "length": round(length, 2)}
    if obs.orientation_deg is not None:
        size["orientation_deg"] = round(obs.orientation_deg % 180.0, 1)
    # A plausible box in a 640x360 frame: the best frame sees the defect a few metres ahead, low in the image.
    w_px = min(300.0, 60.0 * max(width, length))
    return {
        "schema": "roadmon.event/1",
        "event_id": str(uuid7()),
        "device_id": device_id,
        "seq": int(seq),
        "captured_at": utc_iso(epoch + timedelta(seconds=obs.t)),
        "class": obs.cls,
        "confidence": round(min(max(obs.confidence, 0.0), 1.0), 3),
        "position": {"lat": round(lat, 7), "lon": round(lon, 7), "h_accuracy_m": round(obs.h_accuracy_m, 2)},
        "vehicle": {"lat": round(vlat, 7), "lon": round(vlon, 7), "h_accuracy_m": round(obs.h_accuracy_m * 0.95, 2),
                    "speed_mps": round(min(max(obs.speed_mps, 0.0), 100.0), 2),
                    "heading_deg": round(obs.heading_deg % 360.0, 1)},
        "size_m": size,
        "severity": severity(obs.cls, width, length, EVENTS),
        "frames": int(obs.frames),
        "bbox": [round(320 - w_px / 2, 1), 250.0, round(320 + w_px / 2, 1), 290.0],
        "model": dict(MODEL),
    }


def build_coverage(device_id: str, points: list[tuple[float, float, float]], frame: LocalFrame, epoch: datetime,
                   detector_active: bool = True, footprint: dict[str, float] | None = None) -> dict[str, Any]:
    """POINTS: (t, east, north) of the vehicle's filtered positions, in time order, at least two."""
    line = []
    for _, e, n in points:
        lat, lon = frame.to_geodetic(e, n)
        line.append([round(lon, 7), round(lat, 7)])
    return {
        "schema": "roadmon.coverage/1",
        "coverage_id": str(uuid7()),
        "device_id": device_id,
        "started_at": utc_iso(epoch + timedelta(seconds=points[0][0])),
        "ended_at": utc_iso(epoch + timedelta(seconds=points[-1][0])),
        "line": line,
        "detector_active": detector_active,
        "model_sha256": MODEL["sha256"],
        "footprint_m": dict(footprint or cal.FOOTPRINT_M),
    }
