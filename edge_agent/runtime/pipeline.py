"""The agent's main job: frame -> detections -> tracks -> located events in the outbox, plus coverage.

One `Pipeline` serves both `edge-agent run` (live camera, GNSS reader thread) and `edge-agent replay`
(recordings, fixes fed by frame time): the caller hands it frames with their time on the position filter's
clock; everything after that is the same code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from calibration.projector import GroundProjector
from edge_agent.camera.picture import PictureWatch
from edge_agent.config import AgentConfig
from edge_agent.detect.detector import Detection, ModelInfo
from edge_agent.durable import write_durably
from edge_agent.gnss.kalman import Pose
from edge_agent.gnss.motion import VehicleMotion
from edge_agent.health import HealthBoard
from edge_agent.perception.coverage import CoverageRecorder, footprint_summary
from edge_agent.perception.events import ModelRef, build_event
from edge_agent.perception.geolocate import Geolocator, GroundBox
from edge_agent.perception.mount_watch import MountWatch, read_kept
from edge_agent.perception.tracker import RecentReports, Track, Tracker, confirm_scores
from roadmon_contract.status import SPARSE_FRAMES_M
from roadmon_contract.times import utc_now_iso

log = logging.getLogger(__name__)

FPS_SMOOTHING = 0.1  # weight of the newest frame in the smoothed fps / inference figures
MOUNT_KEEP_S = 600.0  # an unchanged mount reading is written to the state folder this often
MAX_HELD_TRACKS = 32  # tracks waiting for a fix hold their crops (full frames too, when configured): bound the memory


class FrameDetector(Protocol):
    """What the pipeline needs of a detector (edge_agent.detect.detector.Detector, or a test's stand-in)."""

    info: ModelInfo

    @property
    def thresholds(self) -> Sequence[float]: ...  # read only: the detector's own tuple

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]: ...


class PositionSource(Protocol):
    """What the pipeline needs of the position filter (edge_agent.gnss.kalman.PositionFilter)."""

    def position_at(self, t_mono: float) -> Pose | None: ...

    def newest_fix_mono(self) -> float | None: ...

    def unsettled(self) -> bool: ...

    def utc_at(self, t_mono: float) -> datetime | None: ...


class EventSink(Protocol):
    """What the pipeline needs of the outbox (edge_agent.link.outbox.Outbox)."""

    def next_seq(self) -> int: ...

    def add_event(self, event: dict[str, Any]) -> bool: ...

    def add_coverage(self, record: dict[str, Any]) -> bool: ...


class Pipeline:
    """Runs each frame through detector, tracker, geolocator and into the outbox and coverage; see `process`.
    The rules live with the parts (placement in the geolocator, the merge window in the tracker, heading and
    motion in gnss.motion); the pipeline only hands results from one to the next."""

    def __init__(self, cfg: AgentConfig, detector: FrameDetector, position_filter: PositionSource,
                 projector: GroundProjector, outbox: EventSink, health: HealthBoard | None = None,
                 mount_file: Path | None = None) -> None:
        self.cfg = cfg
        self.detector = detector
        self.filter = position_filter
        self.projector = projector
        self.outbox = outbox
        self.health = health or HealthBoard()
        self.model = ModelRef.of(detector.info)
        self._use_projector(projector)
        self.say_unknown_classes()
        footprint = footprint_summary(projector.footprint(cfg.events.coverage_footprint_m), projector.mount.lateral_m)
        self.coverage = CoverageRecorder(cfg.device.id, cfg.events, outbox.add_coverage, self.model.sha256, footprint)
        self.recent = RecentReports(cfg.tracker)
        self.motion = VehicleMotion(cfg.tracker.heading_min_speed_mps)
        self._prev_mono: float | None = None    # the last processed frame's time
        self._looked_mono: float | None = None  # the last frame's, repeated or not
        self._fps: float | None = None
        self._m_per_frame: float | None = None
        self._driving_steps = self._sparse_steps = 0  # frames processed while driving, and those too far apart
        # Metres driven with the detector looking since the last event (or the start): doctor's "drove 23 km and
        # found nothing" for a box whose picture reads fine but finds nothing (a smeared windscreen).
        self._driven_m_since_event = 0.0
        self.picture = PictureWatch(self.health, cfg.camera.no_frame_after_s)
        self.mount_watch = MountWatch(cfg.calibration)
        self.mount_file = mount_file  # the last mount reading, kept over restarts
        self._mount_kept: tuple[str, float] | None = None  # (state, when) last written there
        self._restore_mount()
        self._inference_ms: float | None = None
        self._detect_s = 0.0
        self._held: list[tuple[Track, float]] = []  # finished tracks waiting for a fix, with when they finished
        self._held_seen_fix: float | None = None  # the newest fix when the held tracks were last looked at
        self.counts = {"frames": 0, "frames_repeated": 0, "detections": 0, "events": 0, "events_merged": 0,
                       "events_no_fix": 0, "events_held": 0, "events_refused": 0, "detector_errors": 0}
        self.started = time.monotonic()
        self.health.update(model={"name": self.model.name, "version": self.model.version,
                                  "sha256": self.model.sha256})

    def _use_projector(self, projector: GroundProjector) -> None:
        self.projector = projector
        self.geo = Geolocator(projector, self.cfg.events, max_range_m=self.cfg.tracker.max_range_m)
        scores = confirm_scores(self.cfg.tracker, self.cfg.detector.score_threshold,
                                getattr(self.detector, "thresholds", ()))
        self.tracker = Tracker(self.cfg.tracker, self.geo, thumbnail_px=self.cfg.events.thumbnail_max_px,
                               keep_full_frame=self.cfg.events.full_frame, confirm_scores=scores)

    def say_unknown_classes(self) -> None:
        """A model with its own class names (RDD2022's, "alligator crack"): name each that the config does not
        know, so its severity weight and its shape are chosen, not silently defaulted."""
        weights = {k.lower() for k in self.cfg.events.class_weights}
        lines = {k.strip().lower() for k in self.cfg.tracker.line_classes}
        for name in self.detector.info.classes:
            if name.lower() not in weights and name.lower() not in lines:
                log.warning("model class %r is not in events.class_weights (its severity is weighted %.2f, "
                            "events.default_class_weight) and not in tracker.line_classes (it is measured as a "
                            "blob); add it to either if that is wrong", name, self.cfg.events.default_class_weight)

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
        pose = self.filter.position_at(t_mono)
        looked, self._looked_mono = self._looked_mono, t_mono
        if self.picture.look(image, t_mono, self._moved_m(t_mono, pose, self._prev_mono),
                             step_m=self._moved_m(t_mono, pose, looked)):
            # The same picture although the vehicle moved: fed to the tracker it contradicts the motion (a
            # defect that stays put in the image while the road moved on) and split one pothole into two events.
            self.counts["frames_repeated"] += 1
            self.health.count("frames_repeated")
            self.note_position(t_mono)
            return []
        detections, detector_ok = self._detect(image)
        if utc is None:
            utc = self.filter.utc_at(t_mono)
        heading, motion = self.motion.step(t_mono, pose)
        if (reading := self.mount_watch.look(image, t_mono, pose, self.projector)) is not None:
            self.health.update(mount=reading)
            self._keep_mount(reading)
        finished = self.tracker.step(t_mono, detections, motion, image=image, pose=pose, heading_deg=heading,
                                     utc=utc)
        events = self._release_held(t_mono)
        for track in finished:
            events += self._place_or_hold(track, t_mono)
        self.coverage.update(t_mono, utc, pose, detector_active=detector_ok)
        self._note_frame(t_mono, pose)
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The drive (or the agent) ends: every confirmed track becomes its event, coverage is closed."""
        now = self._prev_mono or time.monotonic()
        held, self._held = self._held, []
        events = [e for track, _ in held if (e := self._emit(track, now)) is not None]
        events += [e for track in self.tracker.flush() if (e := self._emit(track, now)) is not None]
        self.coverage.flush()
        return events

    def summary(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        stats = self.tracker.stats
        return {"frames": self.counts["frames"], "frames_repeated": self.counts["frames_repeated"],
                "detections": self.counts["detections"],
                "tracks": stats["tracks"], "confirmed_tracks": stats["confirmed"],
                "tracks_not_fixed": stats["not_fixed"], "events": self.counts["events"],
                "events_merged": self.counts["events_merged"], "events_no_fix": self.counts["events_no_fix"],
                "events_held": self.counts["events_held"], "events_refused": self.counts["events_refused"],
                "coverage_records": self.coverage.records,
                "detector_errors": self.counts["detector_errors"],
                "fps": round(self.counts["frames"] / elapsed, 2),
                "m_per_frame": None if self._m_per_frame is None else round(self._m_per_frame, 2),
                "sparse_share": round(self._sparse_steps / self._driving_steps, 3) if self._driving_steps else None,
                "driven_m_since_event": round(self._driven_m_since_event),
                "inference_ms": None if self._inference_ms is None else round(self._inference_ms, 2),
                "detect_s": round(self._detect_s, 3),
                "mount": self.mount_watch.reading}

    # -- the camera mount ----------------------------------------------------------------------------------
    def _restore_mount(self) -> None:
        if self.mount_file is None or not self.mount_file.exists():
            return
        try:
            kept = read_kept(self.mount_file)
        except (OSError, ValueError) as exc:
            log.warning("the camera mount's kept frames (%s) cannot be read, judging afresh: %s", self.mount_file, exc)
            return
        # A restore that takes the frames leaves their reading.
        if self.mount_watch.restore(kept, self.projector) and (reading := self.mount_watch.reading) is not None:
            self.health.update(mount=reading)
            log.info("camera mount from the frames kept before the start (%s): %s", reading["at"], reading["state"])
        elif self.cfg.calibration.mount_check_every_s > 0:
            log.warning("the camera mount's kept frames (%s) are not usable, judging afresh", self.mount_file)

    def _keep_mount(self, reading: dict[str, Any]) -> None:
        """Keep the frames behind READING when its state changed, and every MOUNT_KEEP_S (a fit every 30 s must
        not wear the card)."""
        if self.mount_file is None or (kept := self.mount_watch.snapshot()) is None:
            return
        now = time.monotonic()
        if self._mount_kept is not None and self._mount_kept[0] == reading["state"] \
                and now - self._mount_kept[1] < MOUNT_KEEP_S:
            return
        try:
            write_durably(self.mount_file, json.dumps(kept))
            self._mount_kept = (reading["state"], now)
        except OSError as exc:  # a full or read-only disk: the reading still goes out in the status
            log.warning("cannot keep the camera mount's frames in %s: %s", self.mount_file, exc)

    # -- steps ---------------------------------------------------------------------------------------------
    def _detect(self, image: np.ndarray) -> tuple[list[Detection], bool]:
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

    def _place_or_hold(self, track: Track, t_mono: float) -> list[dict[str, Any]]:
        """A track whose frames lack a fix on both sides waits (events.hold_for_fix_s) for the fix after them:
        placed now it would be dead reckoning out of the gap's start, or nothing before a first fix. Returns the
        events written: the track's, or the oldest waiting one's when MAX_HELD_TRACKS wait already."""
        if self.cfg.events.hold_for_fix_s <= 0 or not self._waits_for_fix(track):
            return [event] if (event := self._emit(track, t_mono)) is not None else []
        written = []
        if len(self._held) >= MAX_HELD_TRACKS:
            oldest, _ = self._held.pop(0)
            if (event := self._emit(oldest, t_mono)) is not None:
                written.append(event)
        self._held.append((track, t_mono))
        self.counts["events_held"] += 1
        log.info("track %d (%s) seen in a GNSS gap or before a GNSS date: waiting up to %.0f s for a fix",
                 track.id, track.class_name, self.cfg.events.hold_for_fix_s)
        return written

    def _release_held(self, t_mono: float) -> list[dict[str, Any]]:
        if not self._held:
            return []
        newest = self.filter.newest_fix_mono()
        expired = t_mono - self._held[0][1] >= self.cfg.events.hold_for_fix_s
        if newest == self._held_seen_fix and not expired:
            return []  # nothing new to place them with: no need to ask the filter every frame
        self._held_seen_fix = newest
        events, still = [], []
        for track, since in self._held:
            if t_mono - since < self.cfg.events.hold_for_fix_s and self._waits_for_fix(track):
                still.append((track, since))
            elif (event := self._emit(track, t_mono)) is not None:
                events.append(event)
        self._held = still
        return events

    def _waits_for_fix(self, track: Track) -> bool:
        """Whether a fix yet to come would place TRACK better: none has come since its last frame, and some
        frame of it is not within a fix's reach ('ok'), or the filter waits to tell a jump from a glitch. Or
        date it: no GNSS time dates its frames yet (after a cold start a receiver sends positions a minute
        before its date, and a Pi without a clock chip boots with its clock days behind or in 1970, so the
        box's own clock would misdate the event)."""
        if self._gnss_utc(track) is None or self.filter.unsettled():
            return True  # unsettled: the newest fix lies a jump away, and the next tells where the frames were
        newest = self.filter.newest_fix_mono()
        if newest is not None and track.observations and newest > track.observations[-1].t_mono:
            return False
        return any(getattr(self.filter.position_at(obs.t_mono), "state", None) != "ok" for obs in track.observations)

    def _views(self, track: Track) -> list[tuple[GroundBox, Pose, float]]:
        """Each observation's ground box with the vehicle's pose at its frame's time. The filter is asked
        again now: its position_at smooths with the fixes that came after the frame (GnssConfig.smooth), which
        is the reason events are placed only when their track ends. Frames without a placeable pose
        (Geolocator.placeable) are left out; a track left with none writes no event."""
        views = []
        for obs in track.observations:
            pose = self.filter.position_at(obs.t_mono) or obs.pose
            if not self.geo.placeable(pose):
                continue
            heading = self.motion.trusted_heading(pose)
            heading = heading if heading is not None else obs.heading_deg
            if heading is not None:
                views.append((track.ground_of(obs), pose, float(heading)))
        return views

    def _emit(self, track: Track, t_mono: float) -> dict[str, Any] | None:
        located = self.geo.combine(self._views(track))
        if located is None:
            self.counts["events_no_fix"] += 1
            self.health.count("events_no_fix")
            # When and why: the count alone stays for the agent's life, and said "no position" long after the
            # receiver was back (and gave no reason while GNSS read ok but too uncertain).
            last = track.observations[-1] if track.observations else None
            pose = None if last is None else self.filter.position_at(last.t_mono) or last.pose
            self.health.update(last_unplaced={"at": utc_now_iso(), "why": self.geo.unplaceable_why(pose)})
            # A defect the camera saw that cannot go on the map: worth a technician's eye (GNSS antenna, cold start).
            log.warning("track %d (%s, %d frames) had no usable position (no fix, stale or too uncertain); no event",
                        track.id, track.class_name, track.hits)
            return None
        span = (track.observations[0].t_mono, track.observations[-1].t_mono) if track.observations else ()
        if self.recent.seen(track.class_name, located.lat, located.lon, t_mono, *span):
            self.counts["events_merged"] += 1
            return None
        captured = self._gnss_utc(track) or self._clock_utc(track, t_mono)
        vehicle, heading = self._vehicle_near_best(track, located.segment)
        event = build_event(track, located, device_id=self.cfg.device.id, seq=self.outbox.next_seq(),
                            model=self.model, captured_at=captured, cfg=self.cfg.events, vehicle_pose=vehicle,
                            vehicle_heading_deg=heading)
        if not self.outbox.add_event(event):
            self.counts["events_refused"] += 1
            log.warning("outbox refused event %s (disk guard)", event["event_id"])
            return None
        self.counts["events"] += 1
        self.health.count("events")
        self._driven_m_since_event = 0.0
        self.health.set_count("driven_m_since_event", 0)
        self.recent.add(track.class_name, located.lat, located.lon, t_mono, *span)
        return event

    def _gnss_utc(self, track: Track) -> datetime | None:
        """When TRACK's best frame was taken, by GNSS time: the frame's own, or carried to it on the monotonic
        clock from a dated fix that came later."""
        best = track.best or (track.observations[-1] if track.observations else None)
        if best is None:
            return None
        return best.utc or self.filter.utc_at(best.t_mono)

    def _clock_utc(self, track: Track, t_mono: float) -> datetime:
        """The box's own clock at TRACK's best frame: only for a receiver that never sent a date while the
        track waited (events.hold_for_fix_s). Counted, since that clock may be a Pi's without RTC."""
        best = track.best or (track.observations[-1] if track.observations else None)
        ago = max(0.0, t_mono - best.t_mono) if best is not None else 0.0
        self.health.count("events_clock_dated")
        log.warning("track %d (%s): no GNSS date within %.0f s; dated by the box's clock", track.id,
                    track.class_name, self.cfg.events.hold_for_fix_s)
        return datetime.now(UTC) - timedelta(seconds=ago)

    def _vehicle_near_best(self, track: Track, segment: int) -> tuple[Pose | None, float | None]:
        """The vehicle's pose and heading at the track's best frame, asked of the filter again (later fixes
        interpolate, and before a first fix it is carried back). A best frame the filter has no position for
        (older than its history_s, as when the vehicle stood minutes with the defect in view), or one from
        another filter SEGMENT than the defect was placed with (before a jump), is replaced by the frame
        nearest to it in time that has one, so the event says where the vehicle was by the same positions."""
        best = track.best
        if best is None:
            return None, None
        nearest = sorted(track.observations, key=lambda o: abs(o.t_mono - best.t_mono))
        for obs in [best, *nearest]:
            pose = self.filter.position_at(obs.t_mono) or obs.pose
            if pose is not None and pose.lat is not None and getattr(pose, "segment", 0) == segment:
                return pose, obs.heading_deg
        return None, best.heading_deg

    @staticmethod
    def _moved_m(t_mono: float, pose: Pose | None, since: float | None) -> float | None:
        """Metres driven since SINCE, by the filter's speed (None: unknown)."""
        if since is None or pose is None or pose.speed_mps is None:
            return None
        return pose.speed_mps * (t_mono - since)

    def _note_frame(self, t_mono: float, pose: Pose | None) -> None:
        # A pause longer than camera.no_frame_after_s is the camera's fault (no_frames, frozen), not the frame rate:
        # the first frame after a 15 s freeze read "a frame every 180 m while driving" on the dashboard.
        if self._prev_mono is not None and 0 < t_mono - self._prev_mono <= self.cfg.camera.no_frame_after_s:
            fps = 1.0 / (t_mono - self._prev_mono)
            self._fps = fps if self._fps is None else (1 - FPS_SMOOTHING) * self._fps + FPS_SMOOTHING * fps
            speed = None if pose is None else pose.speed_mps
            if speed is not None and speed >= self.cfg.tracker.heading_min_speed_mps:  # standing says nothing
                step = speed * (t_mono - self._prev_mono)
                self._m_per_frame = step if self._m_per_frame is None else \
                    (1 - FPS_SMOOTHING) * self._m_per_frame + FPS_SMOOTHING * step
                # The smoothed figure is the last minute's: a drive too sparse until it slowed to a stop ended at
                # 4.1 m and said nothing. The share of sparse steps speaks for the whole drive.
                self._driving_steps += 1
                self._sparse_steps += step > SPARSE_FRAMES_M
                self._driven_m_since_event += step
                self.health.set_count("driven_m_since_event", int(self._driven_m_since_event))
        self._prev_mono = t_mono
        self.health.update(fps=None if self._fps is None else round(self._fps, 2),
                           m_per_frame=None if self._m_per_frame is None else round(self._m_per_frame, 2),
                           inference_ms=None if self._inference_ms is None else round(self._inference_ms, 2),
                           fix=_fix_of(pose))

    def note_position(self, t_mono: float) -> None:
        """The vehicle's position at T_MONO on the health board although no frame was processed: with the camera
        frozen, black or gone, the status carried no position, and the van vanished from the fleet's map."""
        self.health.update(fix=_fix_of(self.filter.position_at(t_mono)))
        if self._prev_mono is not None and t_mono - self._prev_mono > self.cfg.camera.no_frame_after_s:
            # No frame through the detector for a while: the last rate is history (a box without frames showed
            # 4.9 fps), and the next one starts afresh.
            self._fps = self._m_per_frame = None
            self.health.update(fps=None, m_per_frame=None)


def _fix_of(pose: Pose | None) -> dict[str, Any] | None:
    """The status's `fix`: the filtered position, None without one."""
    if pose is None or pose.lat is None:
        return None
    return {"lat": round(pose.lat, 7), "lon": round(pose.lon, 7), "h_std_m": round(pose.h_std_m, 2),
            "speed_mps": None if pose.speed_mps is None else round(pose.speed_mps, 2),
            "heading_deg": None if pose.heading_deg is None else round(pose.heading_deg, 1), "state": pose.state}
