"""A finished track, located on the ground, as one `roadmon.event/1` message (see roadmon_contract)."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cv2
import numpy as np

from edge_agent.config.events import EventsConfig
from edge_agent.perception.geolocate import Located, severity
from edge_agent.perception.tracker import Track
from roadmon_contract.geodesy import compass_deg
from roadmon_contract.ids import uuid7
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)

SCHEMA = "roadmon.event/1"


@dataclass(frozen=True)
class ModelRef:
    """The model fields of an event (edge_agent.detect.detector.ModelInfo has more)."""

    name: str
    version: str
    sha256: str

    @classmethod
    def of(cls, info: Any) -> ModelRef:
        return cls(name=str(info.name), version=str(info.version), sha256=str(info.sha256).lower())


def jpeg_b64(image: np.ndarray, quality: int, max_px: int | None = None) -> str | None:
    """IMAGE (BGR) as base64 JPEG, scaled down to MAX_PX on its longest side; None if encoding fails."""
    if max_px is not None and max(image.shape[:2]) > max_px:
        scale = max_px / max(image.shape[:2])
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        log.warning("JPEG encoding of a %s image failed", image.shape)
        return None
    return base64.b64encode(buf.tobytes()).decode("ascii")


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, float(value)))


def _vehicle(pose: Any, heading_deg: float | None) -> dict[str, Any]:
    heading = None if heading_deg is None else compass_deg(heading_deg)
    speed = None if pose.speed_mps is None else round(_clamp(pose.speed_mps, 0, 100), 2)
    return {"lat": round(float(pose.lat), 7), "lon": round(float(pose.lon), 7),
            "h_accuracy_m": round(_clamp(pose.h_std_m, 0, 10000), 2),
            "speed_mps": speed, "heading_deg": None if heading is None else round(heading, 1)}


def build_event(track: Track, located: Located, *, device_id: str, seq: int, model: ModelRef,
                captured_at: datetime, cfg: EventsConfig, vehicle_pose: Any = None,
                vehicle_heading_deg: float | None = None) -> dict[str, Any]:
    """The event for TRACK: the defect at LOCATED, the vehicle and box of the track's best frame.
    VEHICLE_POSE (with VEHICLE_HEADING_DEG) is the vehicle at the best frame when known better than at the
    time, or at the nearest frame with a position when the best one had none (see Pipeline._emit)."""
    best = track.best
    if best is None:
        raise ValueError("a track without observations cannot be an event")
    pose = vehicle_pose or best.pose
    if pose is None or pose.lat is None:
        raise ValueError(f"track {track.id} has no vehicle position to put in its event")
    # the pipeline's heading at that frame: held while the vehicle was slow
    heading = vehicle_heading_deg if vehicle_heading_deg is not None else best.heading_deg
    width, length = _clamp(located.width_m, 0, 50), _clamp(located.length_m, 0, 50)
    event: dict[str, Any] = {
        "schema": SCHEMA,
        "event_id": str(uuid7()),
        "device_id": device_id,
        "seq": int(seq),
        "captured_at": utc_iso(captured_at),
        "class": track.class_name,
        "confidence": round(_clamp(track.score, 0, 1), 3),
        "position": {"lat": round(located.lat, 7), "lon": round(located.lon, 7),
                     "h_accuracy_m": round(_clamp(located.h_accuracy_m, 0, 10000), 2)},
        "vehicle": _vehicle(pose, heading),
        "size_m": {"width": round(width, 2), "length": round(length, 2)}
        | ({} if located.orientation_deg is None else {"orientation_deg": round(located.orientation_deg % 180.0, 1)}),
        "severity": severity(track.class_name, width, length, cfg),
        "frames": track.hits,
        "bbox": [round(max(0.0, c), 1) for c in best.bbox],
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
    }
    if cfg.thumbnail and track.best_crop is not None:
        thumb = jpeg_b64(track.best_crop, cfg.thumbnail_quality, cfg.thumbnail_max_px)
        if thumb is not None:
            event["thumbnail_jpeg_b64"] = thumb
    if cfg.full_frame and track.best_frame is not None:
        frame = jpeg_b64(track.best_frame, cfg.thumbnail_quality, cfg.full_frame_max_px)
        if frame is not None:
            event["frame_jpeg_b64"] = frame
    return event
