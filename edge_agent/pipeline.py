"""The agent's main job: frame -> detections -> tracks -> located events in the outbox, plus coverage.

One `Pipeline` serves both `edge-agent run` (live camera, GNSS reader thread) and `edge-agent replay`
(recordings, fixes fed by frame time): the caller hands it frames with their time on the position filter's
clock; everything after that is the same code.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from calibration.projector import GroundProjector
from edge_agent.config import AgentConfig
from edge_agent.coverage import CoverageRecorder, footprint_summary
from edge_agent.events import ModelRef, build_event
from edge_agent.geolocate import Geolocator, distance_m
from edge_agent.health import HealthBoard
from edge_agent.tracker import Motion, Track, Tracker

log = logging.getLogger(__name__)

FPS_SMOOTHING = 0.1  # weight of the newest frame in the smoothed fps / inference figures
YAW_WINDOW_S = 1.0   # the turn rate is the heading change over this long (the filter's heading moves per fix)


def outbox_path(cfg: AgentConfig) -> Path:
    """The outbox file: outbox.file, inside device.state_dir unless it is absolute."""
    path = Path(cfg.outbox.file)
    return path if path.is_absolute() else Path(cfg.device.state_dir) / path


@dataclass
class Emitted:
    """An event recently written, for recognising the same defect seen again by a split track."""

    class_name: str
    lat: float
    lon: float
    t_mono: float


class Pipeline:
    """Wires detector, position filter, tracker, geolocator, outbox and coverage; see `process`."""

    def __init__(self, cfg: AgentConfig, detector: Any, position_filter: Any, projector: GroundProjector,
                 outbox: Any, health: HealthBoard | None = None) -> None:
        self.cfg = cfg
        self.detector = detector
        self.filter = position_filter
        self.projector = projector
        self.outbox = outbox
        self.health = health or HealthBoard()
        self.model = ModelRef.of(detector.info)
        self._use_projector(projector)
        footprint = footprint_summary(projector.footprint(cfg.events.coverage_footprint_m), projector.mount.lateral_m)
        self.coverage = CoverageRecorder(cfg.device.id, cfg.events, outbox.add_coverage, self.model.sha256, footprint)
        self._recent: deque[Emitted] = deque()
        self._prev_mono: float | None = None
        self._prev_pose: Any = None
        self._heading: float | None = None
        self._headings: deque[tuple[float, float]] = deque()
        self._fps: float | None = None
        self._inference_ms: float | None = None
        self._detect_s = 0.0
        self.counts = {"frames": 0, "detections": 0, "events": 0, "events_merged": 0, "events_no_fix": 0,
                       "events_refused": 0, "detector_errors": 0}
        self.started = time.monotonic()
        self.health.update(model={"name": self.model.name, "version": self.model.version,
                                  "sha256": self.model.sha256})

    def _use_projector(self, projector: GroundProjector) -> None:
        self.projector = projector
        self.geo = Geolocator(projector, self.cfg.events, max_range_m=self.cfg.tracker.max_range_m)
        self.tracker = Tracker(self.cfg.tracker, self.geo, thumbnail_px=self.cfg.events.thumbnail_max_px,
                               keep_full_frame=self.cfg.events.full_frame, confirm_scores=self._confirm_scores())

    def _confirm_scores(self) -> dict[int, float]:
        """Each class's track confirmation score: its working threshold plus the margin that the settings put
        between tracker.confirm_score and detector.score_threshold (0.05 by default)."""
        margin = self.cfg.tracker.confirm_score - self.cfg.detector.score_threshold
        thresholds = getattr(self.detector, "thresholds", ())
        return {c: float(min(1.0, max(0.0, t + margin))) for c, t in enumerate(thresholds)}

    def _check_frame_size(self, image: np.ndarray) -> None:
        """On the first frame: a camera streaming another resolution than the calibration's gets the
        intrinsics scaled to it (same lens, same aspect assumed), with a warning."""
        height, width = image.shape[:2]
        intr = self.projector.intrinsics
        if (width, height) != (intr.width, intr.height):
            log.warning("frames are %dx%d but the calibration is for %dx%d; scaling the intrinsics",
                        width, height, intr.width, intr.height)
            self._use_projector(GroundProjector(intr.scaled(width, height), self.projector.mount))

    # -- per frame -----------------------------------------------------------------------------------------
    def process(self, image: np.ndarray, t_mono: float, utc: datetime | None = None) -> list[dict[str, Any]]:
        """Run one frame taken at T_MONO (the position filter's clock); returns the events written.

        UTC is the frame's wall-clock time when the caller knows it (a recording); otherwise it comes from
        the position filter (GNSS time)."""
        if self.counts["frames"] == 0:
            self._check_frame_size(image)
        self.counts["frames"] += 1
        detections, detector_ok = self._detect(image)
        pose = self.filter.position_at(t_mono)
        if utc is None:
            utc = self.filter.utc_at(t_mono)
        heading = self._heading_of(pose)
        finished = self.tracker.step(t_mono, detections, self._motion(t_mono, pose, heading), image=image,
                                     pose=pose, heading_deg=heading, utc=utc)
        events = [e for track in finished if (e := self._emit(track, t_mono)) is not None]
        self.coverage.update(t_mono, utc, pose, detector_active=detector_ok)
        self._note_frame(t_mono, pose)
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The drive (or the agent) ends: every confirmed track becomes its event, coverage is closed."""
        now = self._prev_mono or time.monotonic()
        events = [e for track in self.tracker.flush() if (e := self._emit(track, now)) is not None]
        self.coverage.flush()
        return events

    def summary(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        stats = self.tracker.stats
        return {"frames": self.counts["frames"], "detections": self.counts["detections"],
                "tracks": stats["tracks"], "confirmed_tracks": stats["confirmed"],
                "tracks_not_fixed": stats["not_fixed"], "events": self.counts["events"],
                "events_merged": self.counts["events_merged"], "events_no_fix": self.counts["events_no_fix"],
                "events_refused": self.counts["events_refused"], "coverage_records": self.coverage.records,
                "detector_errors": self.counts["detector_errors"],
                "fps": round(self.counts["frames"] / elapsed, 2),
                "inference_ms": None if self._inference_ms is None else round(self._inference_ms, 2),
                "detect_s": round(self._detect_s, 3)}

    # -- steps ---------------------------------------------------------------------------------------------
    def _detect(self, image: np.ndarray) -> tuple[list[Any], bool]:
        t0 = time.perf_counter()
        try:
            detections = self.detector.detect(image)
        except Exception:  # a bad frame or a runtime hiccup must not stop the agent
            log.exception("detector failed on a frame")
            self.counts["detector_errors"] += 1
            self.health.count("detector_errors")
            self.health.update(detector="failed")
            return [], False
        ms = (time.perf_counter() - t0) * 1000
        self._detect_s += ms / 1000
        self._inference_ms = ms if self._inference_ms is None else \
            (1 - FPS_SMOOTHING) * self._inference_ms + FPS_SMOOTHING * ms
        self.health.update(detector="ok")
        self.counts["detections"] += len(detections)  # each class already cut at its working threshold
        return detections, True

    def _trusted_heading(self, pose: Any) -> float | None:
        """The pose's heading when the vehicle moves fast enough for it to mean something, else None."""
        if pose is None or pose.heading_deg is None or (pose.speed_mps or 0.0) < self.cfg.tracker.heading_min_speed_mps:
            return None
        return float(pose.heading_deg)

    def _heading_of(self, pose: Any) -> float | None:
        """The filtered heading; when the vehicle is slow or stands, the last trustworthy one it had."""
        heading = self._trusted_heading(pose)
        if heading is not None:
            self._heading = heading
        return self._heading

    def _motion(self, t_mono: float, pose: Any, heading: float | None) -> Motion:
        """The vehicle's motion since the previous frame, from the filter's speed and turn rate: smooth, where
        the filtered position steps at each GNSS update. Between fixes the filter's heading stands still and
        then jumps by a second's turn, so the turn rate is taken over the last YAW_WINDOW_S instead of from
        frame to frame."""
        if heading is not None:
            self._headings.append((t_mono, heading))
            while len(self._headings) > 2 and t_mono - self._headings[1][0] >= YAW_WINDOW_S:
                self._headings.popleft()
        if self._prev_mono is None or pose is None or self._prev_pose is None:
            return Motion()
        dt = max(0.0, t_mono - self._prev_mono)
        speed = (float(pose.speed_mps or 0.0) + float(self._prev_pose.speed_mps or 0.0)) / 2
        yaw = 0.0
        if len(self._headings) >= 2:
            (t0, h0), (t1, h1) = self._headings[0], self._headings[-1]
            if t1 > t0:
                yaw = ((h1 - h0 + 180.0) % 360.0 - 180.0) / (t1 - t0) * dt
        return Motion(forward_m=speed * dt, yaw_deg=yaw)

    def _placeable(self, pose: Any) -> bool:
        """Whether POSE may place a defect. A 'stale' pose (a long GNSS dropout) is a frozen position while the
        vehicle drove on: it would put the defect wherever the outage began. A pose whose 1-sigma exceeds
        events.max_pose_h_std_m is too uncertain to tell one defect from the next."""
        if pose is None or pose.lat is None or getattr(pose, "state", None) == "stale":
            return False
        return float(pose.h_std_m) <= self.cfg.events.max_pose_h_std_m

    def _views(self, track: Track) -> list[tuple[Any, Any, float]]:
        """Each observation's ground box with the vehicle's pose at its frame's time. The filter is asked
        again now: its position_at smooths with the fixes that came after the frame (GnssConfig.smooth), which
        is the reason events are placed only when their track ends. Frames without
        a placeable pose (see _placeable) are left out; a track left with none writes no event."""
        views = []
        for obs in track.observations:
            pose = self.filter.position_at(obs.t_mono) or obs.pose
            if not self._placeable(pose):
                continue
            heading = self._trusted_heading(pose)
            heading = heading if heading is not None else obs.heading_deg
            if heading is not None:
                views.append((track.ground_of(obs), pose, float(heading)))
        return views

    def _emit(self, track: Track, t_mono: float) -> dict[str, Any] | None:
        located = self.geo.combine(self._views(track))
        if located is None:
            self.counts["events_no_fix"] += 1
            self.health.count("events_no_fix")
            log.info("track %d (%s, %d frames) had no usable position (no fix, stale or too uncertain); no event",
                     track.id, track.class_name, track.hits)
            return None
        if self._seen_recently(track.class_name, located.lat, located.lon, t_mono):
            self.counts["events_merged"] += 1
            return None
        captured = track.best.utc if track.best and track.best.utc else datetime.now(UTC)
        vehicle, heading = self._vehicle_near_best(track)
        event = build_event(track, located, device_id=self.cfg.device.id, seq=self.outbox.next_seq(),
                            model=self.model, captured_at=captured, cfg=self.cfg.events, vehicle_pose=vehicle,
                            vehicle_heading_deg=heading)
        if not self.outbox.add_event(event):
            self.counts["events_refused"] += 1
            log.warning("outbox refused event %s (disk guard)", event["event_id"])
            return None
        self.counts["events"] += 1
        self.health.count("events")
        self._recent.append(Emitted(track.class_name, located.lat, located.lon, t_mono))
        return event

    def _vehicle_near_best(self, track: Track) -> tuple[Any, float | None]:
        """The vehicle's pose and heading at the track's best frame, asked of the filter again (later fixes
        interpolate). A best frame taken before the first fix has no position: the frame nearest to it in
        time that has one stands in, so the event still says where the vehicle was."""
        best = track.best
        if best is None:
            return None, None
        nearest = sorted(track.observations, key=lambda o: abs(o.t_mono - best.t_mono))
        for obs in [best, *nearest]:
            pose = self.filter.position_at(obs.t_mono) or obs.pose
            if pose is not None and pose.lat is not None:
                return pose, obs.heading_deg
        return None, best.heading_deg

    def _seen_recently(self, class_name: str, lat: float, lon: float, t_mono: float) -> bool:
        window, radius = self.cfg.tracker.merge_window_s, self.cfg.tracker.merge_radius_m
        while self._recent and t_mono - self._recent[0].t_mono > window:
            self._recent.popleft()
        return radius > 0 and any(e.class_name == class_name and distance_m(e.lat, e.lon, lat, lon) <= radius
                                  for e in self._recent)

    def _note_frame(self, t_mono: float, pose: Any) -> None:
        if self._prev_mono is not None and t_mono > self._prev_mono:
            fps = 1.0 / (t_mono - self._prev_mono)
            self._fps = fps if self._fps is None else (1 - FPS_SMOOTHING) * self._fps + FPS_SMOOTHING * fps
        self._prev_mono, self._prev_pose = t_mono, pose
        fix = None
        if pose is not None and pose.lat is not None:
            fix = {"lat": round(pose.lat, 7), "lon": round(pose.lon, 7), "h_std_m": round(pose.h_std_m, 2),
                   "speed_mps": None if pose.speed_mps is None else round(pose.speed_mps, 2),
                   "heading_deg": None if pose.heading_deg is None else round(pose.heading_deg, 1),
                   "state": pose.state}
        self.health.update(fps=None if self._fps is None else round(self._fps, 2),
                           inference_ms=None if self._inference_ms is None else round(self._inference_ms, 2),
                           fix=fix)
