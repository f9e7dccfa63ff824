"""Whether the camera still looks where its calibration says. A camera knocked by a wash brush or re-aimed after a
windscreen repair moves every defect it places (1° of pitch: 1.3 m at 8-15 m ahead, and some split into two
events), and nothing else on the box notices: frames, detections and events all look healthy.

While the vehicle drives straight, a frame every `calibration.mount_check_every_s` goes through the same fit as
`edge-agent calibrate mount` (where the lane markings meet). The median of the last `mount_check_frames` points
gives the pitch and yaw the road shows; when the configured mount would place a defect 15 m ahead more than
`mount_moved_m` from where that mount places it, the health board says `moved`, the status carries it, and the
server lists it among the device's problems. The agent does not re-aim itself: a changed mount is the
technician's to confirm (`calibrate mount`), and a fit fooled by a road without markings must not move the map.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from calibration.camera import Intrinsics, Mount
from calibration.mount_fit import FrameFit, fit_frame, fit_mount, ideal_lens, ideal_view, misplaced_m
from calibration.projector import GroundProjector
from edge_agent.config.calibration import CalibrationConfig
from edge_agent.gnss.motion import PoseLike
from roadmon_contract.status import mount_moved_words
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)

JUDGED_AHEAD_M = 15.0  # where the misplacement is judged: the far end of where the tracker places potholes
STRAIGHT_SPEED_MPS = 8.0  # slower than this a vehicle is in town, turning or queueing: markings curve or hide
STRAIGHT_FOR_S = 5.0  # the heading must have held this long: a curve's markings meet somewhere else
STRAIGHT_WITHIN_DEG = 2.0


@dataclass(frozen=True)
class MountReading:
    """What the road says of the mount: STATE ok | moved | unclear, for the health board and the status."""

    state: str
    pitch_deg: float
    yaw_deg: float
    height_m: float | None  # from the lane's width (calibration.mount_lane_width_m); None when not judged
    configured: Mount
    off_m: float | None  # where the configured mount places a defect JUDGED_AHEAD_M ahead, metres from the truth
    frames: int
    why: str | None = None  # for `unclear`: the fit's doubts

    def as_status(self, at: str | None = None) -> dict[str, Any]:
        """The status's `mount`; AT is when its frames were judged (now, unless restored)."""
        c = self.configured
        return {"state": self.state, "pitch_deg": round(self.pitch_deg, 2), "yaw_deg": round(self.yaw_deg, 2),
                "height_m": None if self.height_m is None else round(self.height_m, 2),
                "config_pitch_deg": round(c.pitch_deg, 2), "config_yaw_deg": round(c.yaw_deg, 2),
                "config_height_m": round(c.height_m, 2), "config_roll_deg": round(c.roll_deg, 2),
                "off_m": None if self.off_m is None else round(self.off_m, 2), "ahead_m": JUDGED_AHEAD_M,
                "frames": self.frames, "why": self.why, "at": at or utc_iso(datetime.now(UTC))}


def mount_file_of(outbox: Path) -> Path:
    """Where the agent keeps the frames its last reading was judged on: beside its outbox."""
    return outbox.with_name(outbox.name + ".mount.json")


class MountWatch:
    """Feed it every frame with `look`; it fits one now and then and answers a reading once it has enough."""

    def __init__(self, cfg: CalibrationConfig) -> None:
        self.cfg = cfg
        self._enough = cfg.mount_check_frames  # fits kept, and needed for a reading
        self._fits: deque[FrameFit] = deque(maxlen=self._enough)
        self._headings: deque[tuple[float, float]] = deque()
        self._last_try: float | None = None
        self._size: tuple[int, int] | None = None
        self.reading: dict[str, Any] | None = None  # the last reading, as the status carries it
        self._judged: tuple[tuple[int, int], list[FrameFit]] | None = None  # the frame size and fits behind it

    def snapshot(self) -> dict[str, Any] | None:
        """What `restore` takes after a restart: the fits the last reading was judged on, not the verdict, so that
        the config of the day judges them (a corrected roll, lens or lane width must not keep or clear an alarm
        on its own, and a damaged verdict once made the server refuse every status)."""
        if self._judged is None or self.reading is None:
            return None
        size, fits = self._judged
        return {"size": list(size), "at": self.reading["at"],
                "fits": [{"vp": list(f.vp), "lane": None if f.boundaries is None else list(f.boundaries)}
                         for f in fits]}

    def restore(self, kept: Any, projector: GroundProjector) -> bool:
        """Judge the fits KEPT by `snapshot` against PROJECTOR's mount and lens (a box switched off every night lost
        a knocked camera's alarm every morning, until it had driven straight for minutes). False when there is
        nothing usable to judge, or the check is switched off."""
        if self.cfg.mount_check_every_s <= 0:
            return False
        parsed = _parse_kept(kept, self._enough)
        if parsed is None:
            return False
        size, at, fits = parsed
        self._size = size
        self._fits.extend(fits)
        reading = read_mount(fits, _ideal(projector.intrinsics, size), projector.mount, self.cfg)
        self.reading, self._judged = reading.as_status(at), (size, list(self._fits))
        return True

    def look(self, image: np.ndarray, t_mono: float, pose: PoseLike | None, projector: GroundProjector
             ) -> dict[str, Any] | None:
        """A new reading (as the status carries it) when this frame was fitted and enough frames are in."""
        if self.cfg.mount_check_every_s <= 0 or not self._straight(t_mono, pose):
            return None
        if self._last_try is not None and t_mono - self._last_try < self.cfg.mount_check_every_s:
            return None
        self._last_try = t_mono
        size = (image.shape[1], image.shape[0])
        if size != self._size:  # another resolution: the points found so far are in other pixels
            self._fits.clear()
            self._size = size
        view, _ = ideal_view(image, projector.intrinsics)
        fit = fit_frame(view)
        if fit is None:
            return None
        self._fits.append(fit)
        if len(self._fits) < self._enough:
            return None
        reading = read_mount(list(self._fits), _ideal(projector.intrinsics, size), projector.mount, self.cfg)
        if reading.state == "unclear" and self.reading is not None and self.reading.get("state") != "unclear":
            return None  # a bendy stretch says nothing new: a knocked camera's `moved` must not vanish with it
        if reading.state == "moved" and (self.reading is None or self.reading.get("state") != "moved"):
            log.warning("the camera aim looks off: %s", mount_moved_words(reading.as_status()))
        self.reading, self._judged = reading.as_status(), (size, list(self._fits))
        return self.reading

    def _straight(self, t_mono: float, pose: PoseLike | None) -> bool:
        heading = getattr(pose, "heading_deg", None)
        if pose is None or heading is None or (pose.speed_mps or 0.0) < STRAIGHT_SPEED_MPS:
            self._headings.clear()
            return False
        self._headings.append((t_mono, float(heading)))
        while t_mono - self._headings[0][0] > STRAIGHT_FOR_S:
            self._headings.popleft()
        if len(self._headings) < 2 or t_mono - self._headings[0][0] < STRAIGHT_FOR_S * 0.8:
            return False
        first = self._headings[0][1]
        return all(abs((h - first + 180.0) % 360.0 - 180.0) <= STRAIGHT_WITHIN_DEG for _, h in self._headings)


def read_mount(fits: list[FrameFit], intr: Intrinsics, configured: Mount, cfg: CalibrationConfig) -> MountReading:
    """The mount FITS (frames of one camera, in INTR's ideal view) show, judged against CONFIGURED: pitch and yaw
    from where the markings meet, and the height too when the lane's width is configured."""
    lane = cfg.mount_lane_width_m or None
    result = fit_mount(fits, intr, configured, lane)
    road = result.mount
    off = misplaced_m(intr, configured, road, JUDGED_AHEAD_M)
    doubts = result.doubts(intr.width)
    moved = off is None or off > cfg.mount_moved_m
    return MountReading("unclear" if doubts else "moved" if moved else "ok", road.pitch_deg, road.yaw_deg,
                        road.height_m if result.height_from_lane else None, configured, off, result.frames_used,
                        "; ".join(doubts) or None)


def _ideal(intr: Intrinsics, size: tuple[int, int]) -> Intrinsics:
    """The distortion-free lens the fits are in (calibration.mount_fit.ideal_view), at the frames' SIZE."""
    return ideal_lens(intr.scaled(*size) if (intr.width, intr.height) != size else intr)


def _parse_kept(kept: Any, frames: int) -> tuple[tuple[int, int], str | None, list[FrameFit]] | None:
    """SIZE, AT and the last FRAMES fits of a `snapshot`; None when it is not one, or holds fewer fits."""
    try:
        w, h = (int(v) for v in kept["size"])
        at = kept.get("at") if isinstance(kept.get("at"), str) and _utc_stamp(kept["at"]) else None
        fits = []
        for item in kept["fits"][-frames:]:
            vp = _pair(item["vp"])
            lane = None if item.get("lane") is None else _pair(item["lane"])
            if not all(map(math.isfinite, vp)):
                return None
            fits.append(FrameFit(vp, np.zeros((0, 4)), 0.0, lane))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if w <= 0 or h <= 0 or len(fits) < frames:
        return None
    return (w, h), at, fits


def _pair(values: Any) -> tuple[float, float]:
    """Two numbers of a kept file; ValueError unless there are exactly two (unpacking says so)."""
    first, second = (float(v) for v in values)
    return first, second


def _utc_stamp(text: str) -> bool:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def read_kept(path: Path) -> Any:
    """The JSON a `snapshot` was written as; raises OSError or ValueError when it cannot be read."""
    return json.loads(path.read_text(encoding="utf-8"))


def reading_from_file(path: Path, cfg: CalibrationConfig, projector: GroundProjector) -> dict[str, Any] | None:
    """What the agent would report of its mount after a start with this config: its kept fits judged now
    (`edge-agent status` and doctor, with the agent running or not, uplink or not)."""
    try:
        kept = read_kept(path)
    except (OSError, ValueError):
        return None
    watch = MountWatch(cfg)
    return watch.reading if watch.restore(kept, projector) else None
