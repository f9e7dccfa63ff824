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
        self._frozen_since: float | None = None  # first repeat of the current run of identical pictures
        self._blank_since: float | None = None
        self._fault: str | None = None
        health.picture(None)  # a pipeline built anew (a model update) must not keep its predecessor's verdict

    def look(self, image: np.ndarray, t_mono: float, moved_m: float | None) -> bool:
        """Judge IMAGE taken at T_MONO after the vehicle drove MOVED_M (None: unknown); True if it is a repeat."""
        thumb = thumbnail(image)
        last, self._thumb = self._thumb, thumb
        same = last is not None and float(np.abs(thumb - last).mean()) < REPEAT_MAX_DIFF
        repeated = same and moved_m is not None and moved_m >= REPEAT_MIN_MOVE_M
        if not same:
            self._frozen_since = None
        elif repeated and self._frozen_since is None:
            self._frozen_since = t_mono  # a parked vehicle's identical frames start no run: nothing proves a freeze
        if not is_blank(thumb):
            self._blank_since = None
        elif self._blank_since is None:
            self._blank_since = t_mono
        self._judge(t_mono)
        return repeated

    def _judge(self, t_mono: float) -> None:
        fault = (FROZEN if self._lasted(self._frozen_since, t_mono) else
                 BLANK if self._lasted(self._blank_since, t_mono) else None)
        if fault == self._fault:
            return
        if fault == FROZEN:
            log.warning("the camera repeats one picture while the vehicle drives (%.0f s): nothing new is detected",
                        t_mono - self._frozen_since)
        elif fault == BLANK:
            log.warning("the camera's picture is black or flat (%.0f s): lens cap, covered lens or no light",
                        t_mono - self._blank_since)
        else:
            log.info("the camera's picture is alive again")
        self._fault = fault
        self.health.picture(fault)

    def _lasted(self, since: float | None, t_mono: float) -> bool:
        return since is not None and t_mono - since >= self.after_s
