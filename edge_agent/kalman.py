"""Where the vehicle is at any monotonic time: a constant-velocity Kalman filter over GNSS fixes.

The state is [east, north, v_east, v_north] in a local ENU frame anchored at the first good fix and moved when
the vehicle is far from it. Measurement noise comes from the fix's `eph_m` (GST sigmas, else HDOP x UERE);
the receiver's Doppler speed and track are a second, much more precise measurement of velocity. A fix that
fails the Mahalanobis gate is an outlier and is skipped; a jump beyond `reset_jump_m`, a gap beyond
`reset_gap_s`, time going backwards, too many outliers in a row or a non-finite state restart the filter.

`position_at(t)` answers for any time: between two filtered states it interpolates (cubic Hermite, using the
velocities), after the last one it predicts with growing uncertainty ('predicting', then 'stale' after
`stale_after_s`, when the position stops moving and only its uncertainty keeps growing).
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from filterpy.kalman import KalmanFilter

from edge_agent.config.gnss import GnssConfig
from edge_agent.epochs import Fix

log = logging.getLogger(__name__)

PoseState = Literal["ok", "predicting", "stale", "reset"]
_WGS84_A = 6378137.0
_WGS84_E2 = 6.69437999014e-3
_H_POS = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
_H_POS_VEL = np.eye(4)
_MIN_SIGMA_M = 0.05


@dataclass(frozen=True)
class Pose:
    lat: float
    lon: float
    speed_mps: float
    heading_deg: float | None
    h_std_m: float  # horizontal 1-sigma (DRMS) uncertainty in metres
    state: PoseState
    t_mono: float


class LocalFrame:
    """Tangent-plane ENU metres around an anchor; exact round trip, scale error < 0.1 % within 5 km."""

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0, self.lon0 = lat0, lon0
        phi = math.radians(lat0)
        w = math.sqrt(1.0 - _WGS84_E2 * math.sin(phi) ** 2)
        self._m_per_rad_n = _WGS84_A * (1.0 - _WGS84_E2) / w**3
        self._m_per_rad_e = max(_WGS84_A / w * math.cos(phi), 1.0)

    def to_enu(self, lat: float, lon: float) -> tuple[float, float]:
        dlon = (lon - self.lon0 + 180.0) % 360.0 - 180.0
        return math.radians(dlon) * self._m_per_rad_e, math.radians(lat - self.lat0) * self._m_per_rad_n

    def to_geodetic(self, east: float, north: float) -> tuple[float, float]:
        lat = self.lat0 + math.degrees(north / self._m_per_rad_n)
        lon = self.lon0 + math.degrees(east / self._m_per_rad_e)
        return max(-90.0, min(90.0, lat)), (lon + 180.0) % 360.0 - 180.0


def transition(dt_s: float) -> np.ndarray:
    f = np.eye(4)
    f[0, 2] = f[1, 3] = dt_s
    return f


def process_noise(dt_s: float, accel_sigma: float) -> np.ndarray:
    """Continuous white-noise acceleration, per axis [[dt^3/3, dt^2/2], [dt^2/2, dt]] x sigma^2."""
    q = accel_sigma**2
    a, b, c = dt_s**3 / 3.0 * q, dt_s**2 / 2.0 * q, dt_s * q
    return np.array([[a, 0, b, 0], [0, a, 0, b], [b, 0, c, 0], [0, b, 0, c]])


@dataclass
class _Posterior:
    """A filtered state after a fix, kept for position_at."""

    t: float
    lat: float
    lon: float
    ve: float
    vn: float
    cov: np.ndarray
    state: PoseState
    segment: int


@dataclass
class FilterStats:
    fixes: int = 0
    updates: int = 0
    outliers: int = 0
    no_fix: int = 0
    estimated: int = 0
    resets: dict[str, int] = field(default_factory=dict)


class PositionFilter:
    """Thread-safe: the GNSS reader calls update(), the pipeline calls position_at()/utc_at()."""

    def __init__(self, cfg: GnssConfig | None = None) -> None:
        self.cfg = cfg or GnssConfig()
        self.stats = FilterStats()
        self._lock = threading.Lock()
        self._kf: KalmanFilter | None = None
        self._frame: LocalFrame | None = None
        self._history: deque[_Posterior] = deque()
        self._times: deque[float] = deque()
        self._segment = 0
        self._last_t: float | None = None
        self._last_fix_t: float | None = None
        self._last_utc: dt.datetime | None = None
        self._utc_ref: tuple[float, dt.datetime] | None = None
        self._rejections = 0
        self._started = False

    # --- public API

    def update(self, fix: Fix) -> Pose | None:
        """Feed one epoch; returns the filtered pose at its time (None before the first fix)."""
        with self._lock:
            return self._update(fix)

    def position_at(self, t_mono: float) -> Pose | None:
        with self._lock:
            return self._position_at(t_mono)

    def utc_at(self, t_mono: float) -> dt.datetime | None:
        with self._lock:
            if self._utc_ref is None or not math.isfinite(t_mono):
                return None
            t_ref, utc_ref = self._utc_ref
            return utc_ref + dt.timedelta(seconds=t_mono - t_ref)

    def reset(self, reason: str = "manual") -> None:
        with self._lock:
            self._reset(reason)

    # --- update

    def _update(self, fix: Fix) -> Pose | None:
        t = fix.t_mono
        if not math.isfinite(t):
            return None
        if self._went_backwards(fix):
            self._reset("time_backwards")
            self._utc_ref = None
        self._last_t = t
        if fix.utc is not None:
            self._last_utc = fix.utc
            if fix.mode > 0 or self._utc_ref is None:
                self._utc_ref = (t, fix.utc)
        if fix.mode == 0 or fix.lat is None or fix.lon is None:
            self.stats.no_fix += 1
            return self._position_at(t)
        if fix.estimated:
            self.stats.estimated += 1  # the receiver coasting: our own prediction is as good
            return self._position_at(t)
        self.stats.fixes += 1
        if self._kf is not None and self._last_fix_t is not None:
            if t <= self._last_fix_t:
                return self._position_at(t)  # the same epoch twice
            if t - self._last_fix_t > self.cfg.reset_gap_s:
                self._reset("gap")
        if self._kf is None:
            return self._start(fix, "reset" if self._started else "ok")
        return self._measure(fix)

    def _went_backwards(self, fix: Fix) -> bool:
        if self._last_t is not None and fix.t_mono < self._last_t:
            return True
        return fix.utc is not None and self._last_utc is not None and fix.utc < self._last_utc

    def _reset(self, reason: str) -> None:
        if self._kf is not None or self._history:
            self.stats.resets[reason] = self.stats.resets.get(reason, 0) + 1
            log.info("position filter reset: %s", reason)
        self._kf = None
        self._frame = None
        self._last_fix_t = None
        self._rejections = 0
        if reason == "time_backwards":
            self._history.clear()
            self._times.clear()
            self._last_t = None
            self._last_utc = None

    def _measurement(self, fix: Fix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """z, R, H for a fix: position always, velocity when the receiver gives it."""
        east, north = self._frame.to_enu(fix.lat, fix.lon)
        eph = fix.eph_m
        if eph is None and fix.hdop is not None:
            eph = fix.hdop * self.cfg.uere_m
        sigma = max((eph if eph is not None else 3.0 * self.cfg.uere_m) / math.sqrt(2.0), _MIN_SIGMA_M)
        velocity = self._receiver_velocity(fix)
        if velocity is None:
            return np.array([east, north]), np.eye(2) * sigma**2, _H_POS
        r = np.diag([sigma**2, sigma**2, self.cfg.velocity_sigma_mps**2, self.cfg.velocity_sigma_mps**2])
        return np.array([east, north, *velocity]), r, _H_POS_VEL

    def _receiver_velocity(self, fix: Fix) -> tuple[float, float] | None:
        if not self.cfg.use_receiver_velocity or fix.speed_mps is None:
            return None
        if fix.track_deg is None:
            return (0.0, 0.0) if fix.speed_mps < 0.2 else None
        heading = math.radians(fix.track_deg)
        return fix.speed_mps * math.sin(heading), fix.speed_mps * math.cos(heading)

    def _start(self, fix: Fix, state: PoseState) -> Pose:
        self._frame = LocalFrame(fix.lat, fix.lon)
        z, r, h = self._measurement(fix)
        kf = KalmanFilter(dim_x=4, dim_z=2)
        kf.x = np.zeros(4)
        speed_var = 30.0**2  # unknown velocity: anything a road vehicle does
        kf.P = np.diag([r[0, 0], r[1, 1], speed_var, speed_var])
        if h is _H_POS_VEL:
            kf.x[2:] = z[2:]
            kf.P[2, 2] = kf.P[3, 3] = r[2, 2]
        self._kf = kf
        self._started = True
        self._segment += 1
        return self._commit(fix.t_mono, state)

    def _measure(self, fix: Fix) -> Pose:
        kf = self._kf
        dt_s = fix.t_mono - self._last_fix_t
        x_before, p_before = kf.x.copy(), kf.P.copy()
        kf.predict(F=transition(dt_s), Q=process_noise(dt_s, self.cfg.process_accel_mps2))
        z, r, h = self._measurement(fix)
        innovation = z[:2] - kf.x[:2]
        if math.hypot(*innovation) > self.cfg.reset_jump_m:
            self._reset("jump")
            return self._start(fix, "reset")
        s = kf.P[:2, :2] + r[:2, :2]
        d2 = float(innovation @ np.linalg.solve(s, innovation))
        if d2 > self.cfg.gate_chi2:
            self.stats.outliers += 1
            self._rejections += 1
            if self._rejections >= self.cfg.max_rejections:
                self._reset("outliers")
                return self._start(fix, "reset")
            # The prediction stands; roll the filter back so the next fix predicts from the last posterior.
            kf.x, kf.P = x_before, p_before
            return self._position_at(fix.t_mono)
        kf.update(z, R=r, H=h)
        if not (np.all(np.isfinite(kf.x)) and np.all(np.isfinite(kf.P))):
            self._reset("non_finite")
            return self._start(fix, "reset")
        self.stats.updates += 1
        self._rejections = 0
        return self._commit(fix.t_mono, "ok")

    def _commit(self, t: float, state: PoseState) -> Pose:
        kf = self._kf
        self._last_fix_t = t
        lat, lon = self._frame.to_geodetic(kf.x[0], kf.x[1])
        if math.hypot(kf.x[0], kf.x[1]) > self.cfg.reanchor_m:
            self._frame = LocalFrame(lat, lon)
            kf.x[0] = kf.x[1] = 0.0
        post = _Posterior(t, lat, lon, float(kf.x[2]), float(kf.x[3]), kf.P.copy(), state, self._segment)
        self._history.append(post)
        self._times.append(t)
        while self._times and self._times[0] < t - self.cfg.history_s:
            self._history.popleft()
            self._times.popleft()
        return self._pose(post.lat, post.lon, post.ve, post.vn, self._h_std(post.cov), state, t)

    # --- queries

    def _position_at(self, t: float) -> Pose | None:
        if not self._history or not math.isfinite(t):
            return None
        i = bisect.bisect_right(self._times, t)
        if i == 0:
            return None  # older than the history kept
        a = self._history[i - 1]
        if t == a.t:
            return self._pose(a.lat, a.lon, a.ve, a.vn, self._h_std(a.cov), a.state, t)
        if i < len(self._history) and self._history[i].segment == a.segment:
            return self._interpolate(a, self._history[i], t)
        return self._extrapolate(a, t)

    def _state_after(self, since_fix_s: float) -> PoseState:
        if since_fix_s <= self.cfg.ok_window_s:
            return "ok"
        return "predicting" if since_fix_s <= self.cfg.stale_after_s else "stale"

    def _extrapolate(self, a: _Posterior, t: float) -> Pose:
        dt_s = t - a.t
        moving_s = min(dt_s, self.cfg.stale_after_s)  # past the stale limit the position stops running away
        frame = LocalFrame(a.lat, a.lon)
        lat, lon = frame.to_geodetic(a.ve * moving_s, a.vn * moving_s)
        f = transition(dt_s)
        cov = f @ a.cov @ f.T + process_noise(dt_s, self.cfg.process_accel_mps2)
        return self._pose(lat, lon, a.ve, a.vn, self._h_std(cov), self._state_after(dt_s), t)

    def _interpolate(self, a: _Posterior, b: _Posterior, t: float) -> Pose:
        span = b.t - a.t
        s = (t - a.t) / span
        frame = LocalFrame(a.lat, a.lon)
        e1, n1 = frame.to_enu(b.lat, b.lon)
        h10, h01, h11 = s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
        east = h10 * span * a.ve + h01 * e1 + h11 * span * b.ve
        north = h10 * span * a.vn + h01 * n1 + h11 * span * b.vn
        # The start point is the frame's origin, so its position terms vanish.
        d10, d01, d11 = 3 * s**2 - 4 * s + 1, (6 * s - 6 * s**2) / span, 3 * s**2 - 2 * s
        ve = d10 * a.ve + d01 * e1 + d11 * b.ve
        vn = d10 * a.vn + d01 * n1 + d11 * b.vn
        lat, lon = frame.to_geodetic(east, north)
        h_std = (1 - s) * self._h_std(a.cov) + s * self._h_std(b.cov)
        state = self._state_after(min(t - a.t, b.t - t))
        return self._pose(lat, lon, ve, vn, h_std, state, t)

    @staticmethod
    def _h_std(cov: np.ndarray) -> float:
        return math.sqrt(max(cov[0, 0] + cov[1, 1], 0.0))

    def _pose(self, lat: float, lon: float, ve: float, vn: float, h_std: float,
              state: PoseState, t: float) -> Pose:
        speed = math.hypot(ve, vn)
        heading = math.degrees(math.atan2(ve, vn)) % 360.0 if speed > self.cfg.heading_min_speed_mps else None
        return Pose(lat=lat, lon=lon, speed_mps=speed, heading_deg=heading, h_std_m=h_std, state=state, t_mono=t)
