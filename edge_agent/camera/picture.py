"""Is there a live picture in the frames? A stream that repeats one picture while the vehicle drives (a stuck IP
camera, a hung USB driver) or shows nothing (a lens cap, a covered lens, a dead sensor, night without light)
still delivers frames, so the camera looked `ok` everywhere while nothing new could be detected."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from edge_agent.health import HealthBoard

log = logging.getLogger(__name__)

# A frame whose 64x36 grey thumbnail differs from the last one's by less than this (mean grey levels) while the
# vehicle drove REPEAT_MIN_MOVE_M repeats it: a stalled camera or a video made constant-rate by repeating frames.
REPEAT_MAX_DIFF = 0.25
REPEAT_MIN_MOVE_M = 0.5
# One picture while the vehicle drove this far (and for the set time) is a frozen stream, at any speed: judged
# against the run's first picture, since frame to frame a crawl moves too little to tell (at 30 fps a stuck
# camera passed as live below 54 km/h when each frame pair had to be 0.5 m apart).
FROZEN_MIN_M = 5.0
# A thumbnail whose grey levels vary less than this is black or flat (sensor noise averages out in the thumbnail:
# a covered lens with noise of std 3 in the full frame is under 1 here; a road scene, even at dusk, is above 10).
BLANK_STD = 2.0

# Health words, beside the capture's ok | no_frames | lost | starting.
FROZEN = "frozen"
BLANK = "blank"


def thumbnail(image: np.ndarray) -> np.ndarray:
    small = cv2.resize(image, (64, 36), interpolation=cv2.INTER_AREA).astype(np.float32)
    return small.mean(axis=2) if small.ndim == 3 else small


def is_blank(thumb: np.ndarray) -> bool:
    return float(thumb.std()) < BLANK_STD


class PictureWatch:
    """Per processed frame: whether it repeats the last one while the vehicle moved (the pipeline drops those), and,
    once the picture has been frozen or blank for AFTER_S, the camera's state on the health board."""

    def __init__(self, health: HealthBoard, after_s: float) -> None:
        self.health = health
        self.after_s = after_s
        self._thumb: np.ndarray | None = None
        self._still: np.ndarray | None = None  # the first picture of the current run of identical ones
        self._still_since = 0.0
        self._still_m = 0.0  # metres driven since
        self._blank_since: float | None = None
        self._fault: str | None = None
        health.picture(None)  # a pipeline built anew (a model update) must not keep its predecessor's verdict

    def look(self, image: np.ndarray, t_mono: float, moved_m: float | None, step_m: float | None = None) -> bool:
        """Judge IMAGE taken at T_MONO after the vehicle drove MOVED_M since the last frame the pipeline kept and
        STEP_M since the last frame of all (the same unless frames were dropped as repeats; None: unknown); True
        if it is a repeat."""
        thumb = thumbnail(image)
        last, self._thumb = self._thumb, thumb
        repeated = _same(thumb, last) and moved_m is not None and moved_m >= REPEAT_MIN_MOVE_M
        if _same(thumb, self._still):
            # Per frame: summing the distance since the last kept frame counted 30 m of a freeze as 300 m.
            # A parked vehicle drives no metres: its still view proves nothing.
            self._still_m += (moved_m if step_m is None else step_m) or 0.0
        else:
            self._still, self._still_since, self._still_m = thumb, t_mono, 0.0
        if not is_blank(thumb):
            self._blank_since = None
        elif self._blank_since is None:
            self._blank_since = t_mono
        self._judge(t_mono)
        return repeated

    def _judge(self, t_mono: float) -> None:
        # Blank first: a black picture repeats too, and a lens cap is not a stuck stream.
        frozen = self._still_m >= FROZEN_MIN_M and t_mono - self._still_since >= self.after_s
        fault = BLANK if self._lasted(self._blank_since, t_mono) else FROZEN if frozen else None
        if fault == self._fault:
            return
        if fault == FROZEN:
            log.warning("the camera shows one picture while the vehicle drove %.0f m: a stuck stream, or a camera "
                        "that sees nothing that changes (the sky); nothing new is detected", self._still_m)
        elif fault == BLANK:
            log.warning("the camera's picture is black or flat (%.0f s): lens cap, covered lens or no light",
                        t_mono - (self._blank_since or t_mono))
        else:
            log.info("the camera's picture is alive again")
        self._fault = fault
        self.health.picture(fault)

    def _lasted(self, since: float | None, t_mono: float) -> bool:
        return since is not None and t_mono - since >= self.after_s


def _same(thumb: np.ndarray, other: np.ndarray | None) -> bool:
    return other is not None and float(np.abs(thumb - other).mean()) < REPEAT_MAX_DIFF
