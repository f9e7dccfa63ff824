"""The vehicle's motion between two camera frames, from the position filter's poses.

The tracker predicts where a defect moves in the image from how far the vehicle drove and how much it turned
since the previous frame. Both come from the filter's speed and heading rather than from its position, which
steps at each GNSS update while frames arrive 10-30 times as often.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

COAST_AFTER_S = 1.0  # predicted this long in a row: a GNSS gap, not the wait between a 0.5 Hz receiver's fixes
YAW_WINDOW_S = 1.0  # the turn rate is the heading change over this long (the filter's heading moves per fix)


class PoseLike(Protocol):
    """What the motion needs of a pose (the filter's frozen Pose): read-only."""

    @property
    def speed_mps(self) -> float | None: ...
    @property
    def heading_deg(self) -> float | None: ...


@dataclass(frozen=True)
class Motion:
    """How the vehicle moved since the previous frame: metres forward, degrees turned right (clockwise)."""

    forward_m: float = 0.0
    yaw_deg: float = 0.0
    coasting: bool = False  # positions predicted without fixes for COAST_AFTER_S: speed and turn are guesses


class VehicleMotion:
    """Feed it every frame's pose with `step`; it answers the frame's heading and the motion since the last."""

    def __init__(self, heading_min_speed_mps: float) -> None:
        self.heading_min_speed_mps = heading_min_speed_mps
        self._heading: float | None = None
        self._headings: deque[tuple[float, float]] = deque()
        self._prev: tuple[float, PoseLike | None] | None = None
        self._unfixed_since: float | None = None  # when the poses began to be predictions without a fix

    def trusted_heading(self, pose: PoseLike | None) -> float | None:
        """The pose's heading when the vehicle moves fast enough for it to mean something (a GNSS course over
        ground at walking pace is noise), else None."""
        if pose is None or pose.heading_deg is None or (pose.speed_mps or 0.0) < self.heading_min_speed_mps:
            return None
        return float(pose.heading_deg)

    def step(self, t_mono: float, pose: PoseLike | None) -> tuple[float | None, Motion]:
        """(heading, motion) for a frame at T_MONO: the filtered heading, or while the vehicle is slow or stands
        the last trustworthy one; and the motion since the previous frame. Between fixes the filter's heading
        stands still and then jumps by a second's turn, so the turn rate is taken over the last YAW_WINDOW_S
        instead of from frame to frame."""
        heading = self.trusted_heading(pose)
        if heading is not None:
            self._heading = heading
        heading = self._heading
        if getattr(pose, "state", "ok") in ("predicting", "stale"):
            self._unfixed_since = t_mono if self._unfixed_since is None else self._unfixed_since
        else:
            self._unfixed_since = None
        coasting = self._unfixed_since is not None and t_mono - self._unfixed_since >= COAST_AFTER_S
        if coasting:
            # The coasting heading is frozen and the first fix after the gap turns it by the whole curve at
            # once: neither is a turn rate, so the window starts afresh after the gap.
            self._headings.clear()
        elif heading is not None:
            self._headings.append((t_mono, heading))
            while len(self._headings) > 2 and t_mono - self._headings[1][0] >= YAW_WINDOW_S:
                self._headings.popleft()
        motion = Motion()
        prev_mono, prev_pose = self._prev or (None, None)
        if prev_mono is not None and pose is not None and prev_pose is not None:
            dt = max(0.0, t_mono - prev_mono)
            speed = (float(pose.speed_mps or 0.0) + float(prev_pose.speed_mps or 0.0)) / 2
            yaw = 0.0
            if len(self._headings) >= 2:
                (t0, h0), (t1, h1) = self._headings[0], self._headings[-1]
                if t1 > t0:
                    yaw = ((h1 - h0 + 180.0) % 360.0 - 180.0) / (t1 - t0) * dt
            motion = Motion(forward_m=speed * dt, yaw_deg=yaw, coasting=coasting)
        self._prev = (t_mono, pose)
        return heading, motion
