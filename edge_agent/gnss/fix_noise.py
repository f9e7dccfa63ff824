"""How noisy a receiver's fixes really are, against what it says (GST sigmas, HDOP x UERE).

A receiver's own error figures are often off by a factor: HDOP x UERE is a rule of thumb, and GST is what the
receiver believes. Its Doppler velocity, though, is precise: between two fixes the vehicle moves by the mean of
the two velocities times the time step, up to decimetres even in turns and braking. So the difference between
the displacement of two consecutive fixes and that velocity-traced displacement is, per axis, the difference
of two fix errors: its mean square over both axes is 2 x (r_prev + r_now) when the figures r are right. The
ratio of the two, averaged over the last `fix_noise_window` fixes, scales the figures the filter uses.

Unlike the filter's innovations this check does not depend on the filter's own dynamics model, which lags in
turns and would pass its own error off as the receiver's. It sees the part of the error that changes from fix
to fix; an error that wanders slowly (multipath, atmosphere) looks the same in consecutive fixes and is not
seen by any check without a reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

MIN_SAMPLES = 10        # below this many pairs the receiver's own figures stand
MAX_STEP_S = 2.5        # beyond this the velocities at both ends no longer trace the path between them
SCALE_LIMITS = (1 / 25, 25.0)  # variance scale: the figures are trusted to within a factor of 5 in sigma


class FixNoiseScale:
    """The factor on the receiver's per-axis position variance, learned from pairs of consecutive fixes."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.samples = 0
        self._mean = 1.0
        self._last: tuple[float, float, float, float, float, float] | None = None  # t, lat, lon, ve, vn, r

    @property
    def scale(self) -> float:
        return self._mean if self.samples >= MIN_SAMPLES else 1.0

    def observe(self, t: float, lat: float, lon: float, velocity: tuple[float, float] | None, r: float,
                to_enu: Callable[[float, float], tuple[float, float]]) -> None:
        """One fix at T with the receiver's per-axis variance R; TO_ENU maps lat/lon to metres in one frame."""
        if velocity is None:
            self._last = None
            return
        last, self._last = self._last, (t, lat, lon, velocity[0], velocity[1], r)
        if last is None or not 0.0 < t - last[0] <= MAX_STEP_S:
            return
        t0, lat0, lon0, ve0, vn0, r0 = last
        dt = t - t0
        e0, n0 = to_enu(lat0, lon0)
        e1, n1 = to_enu(lat, lon)
        de = e1 - e0 - (ve0 + velocity[0]) / 2 * dt
        dn = n1 - n0 - (vn0 + velocity[1]) / 2 * dt
        ratio = (de * de + dn * dn) / (2.0 * (r0 + r))
        if not math.isfinite(ratio):
            return
        # One wild fix (multipath) must not throw the scale off for a minute: a sample counts at most as the limit.
        ratio = min(ratio, SCALE_LIMITS[1])
        self.samples += 1
        weight = max(1.0 / self.samples, 1.0 / self.window)
        self._mean += weight * (ratio - self._mean)
        self._mean = min(max(self._mean, SCALE_LIMITS[0]), SCALE_LIMITS[1])
