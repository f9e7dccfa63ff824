"""Where the vehicle is at any monotonic time: a constant-velocity Kalman filter over GNSS fixes.

The state is [east, north, v_east, v_north] in a local ENU frame anchored at the first good fix and moved when
the vehicle is far from it. Measurement noise comes from the fix's `eph_m` (GST sigmas, else HDOP x UERE),
scaled by how much the fixes really scatter (edge_agent.gnss.fix_noise); the receiver's Doppler speed and track are
a second, much more precise measurement of velocity, applied first so that the gate judges the position
against where the vehicle went. A fix that fails the Mahalanobis gate is an outlier and is weighed down to
the gate; a jump beyond `reset_jump_m`, a gap beyond `reset_gap_s`, time going backwards, too many outliers in
a row or a non-finite state restart the filter. h_std is the filter's covariance plus the "slow part" of the
stated error, the part the scatter check does not see and no filtering removes.

The filter is filterpy's 4-state constant-velocity KalmanFilter, computed as two independent float axis
filters (east and north never couple here): ten times faster, and checked against filterpy step by step in
the tests.

`position_at(t)` answers for any time: between two states it interpolates (cubic Hermite, using the
velocities), after the last one it predicts with growing uncertainty ('predicting', then 'stale' after
`stale_after_s`, when the position stops moving and only its uncertainty keeps growing). With `smooth` the
states it interpolates are smoothed (Rauch-Tung-Striebel over the kept history): a time in the past is placed
with the fixes after it too, which is what placing a defect seen seconds ago wants. The newest state is the
filtered one either way; the smoothed pass is computed lazily, only as far back as asked, once per new fix.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from edge_agent.config.gnss import GnssConfig
from edge_agent.gnss.epochs import Fix, fix_position
from edge_agent.gnss.fix_noise import FixNoiseScale
from roadmon_contract.geodesy import LocalFrame, compass_deg

log = logging.getLogger(__name__)

PoseState = Literal["ok", "predicting", "stale", "reset"]
_UNKNOWN_SPEED_VAR = 30.0**2  # a velocity not measured yet: anything a road vehicle does
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
    # Which stretch between filter resets the pose belongs to: poses of two segments disagree by whatever made
    # the reset (a jump of the receiver's position), so one defect is placed from one segment's poses.
    segment: int = 0


@dataclass(slots=True)
class Axis:
    """One axis of the constant-velocity filter: position p, velocity v, covariance [[a, b], [b, c]].

    With a diagonal measurement noise and per-axis process noise, the 4-state [e, n, ve, vn] Kalman filter
    never couples east and north, so it is exactly two of these. Written out in floats it runs ~10x faster than
    the same filter through numpy/filterpy (the benchmark's budget); tests check it against filterpy's
    KalmanFilter step by step.
    """

    p: float
    v: float
    a: float
    b: float
    c: float

    def predicted(self, dt_s: float, q: float) -> Axis:
        """x <- F x, P <- F P F' + Q for F = [[1, dt], [0, 1]] and continuous white-noise acceleration q."""
        dt2 = dt_s * dt_s
        return Axis(self.p + self.v * dt_s, self.v,
                    self.a + 2.0 * self.b * dt_s + self.c * dt2 + q * dt2 * dt_s / 3.0,
                    self.b + self.c * dt_s + q * dt2 / 2.0,
                    self.c + q * dt_s)

    def update_position(self, z: float, r: float) -> None:
        s = self.a + r
        k1, k2 = self.a / s, self.b / s
        y = z - self.p
        self.p += k1 * y
        self.v += k2 * y
        self.a, self.b, self.c = self.a - k1 * self.a, self.b - k1 * self.b, self.c - k2 * self.b

    def update_velocity(self, z: float, r: float) -> None:
        s = self.c + r
        k1, k2 = self.b / s, self.c / s
        y = z - self.v
        self.p += k1 * y
        self.v += k2 * y
        self.a, self.b, self.c = self.a - k1 * self.b, self.b - k1 * self.c, self.c - k2 * self.c

    def smoothed(self, prior_next: Axis, smoothed_next: Axis, dt_s: float) -> Axis:
        """One Rauch-Tung-Striebel step back: this filtered state, given the prediction PRIOR_NEXT made from it
        DT_S later and the smoothed state SMOOTHED_NEXT there (positions of all three in one frame)."""
        # G = P F' Pp^-1 with F = [[1, dt], [0, 1]]
        m11, m12, m21, m22 = self.a + self.b * dt_s, self.b, self.b + self.c * dt_s, self.c
        det = prior_next.a * prior_next.c - prior_next.b * prior_next.b
        if not det > 0.0:
            return Axis(self.p, self.v, self.a, self.b, self.c)
        g11 = (m11 * prior_next.c - m12 * prior_next.b) / det
        g12 = (m12 * prior_next.a - m11 * prior_next.b) / det
        g21 = (m21 * prior_next.c - m22 * prior_next.b) / det
        g22 = (m22 * prior_next.a - m21 * prior_next.b) / det
        dp, dv = smoothed_next.p - prior_next.p, smoothed_next.v - prior_next.v
        d11, d12, d22 = (smoothed_next.a - prior_next.a, smoothed_next.b - prior_next.b,
                         smoothed_next.c - prior_next.c)
        gd11, gd12 = g11 * d11 + g12 * d12, g11 * d12 + g12 * d22
        gd21, gd22 = g21 * d11 + g22 * d12, g21 * d12 + g22 * d22
        return Axis(self.p + g11 * dp + g12 * dv, self.v + g21 * dp + g22 * dv,
                    self.a + gd11 * g11 + gd12 * g12, self.b + gd11 * g21 + gd12 * g22,
                    self.c + gd21 * g21 + gd22 * g22)

    def finite(self) -> bool:
        return math.isfinite(self.p + self.v + self.a + self.b + self.c)  # NaN or inf anywhere spoils the sum

    def relative(self) -> Axis:
        """The same velocity and covariance, at position 0 (a posterior's own origin)."""
        return Axis(0.0, self.v, self.a, self.b, self.c)


@dataclass
class _Posterior:
    """A filtered state after a fix, kept for position_at (axes relative to this posterior's own lat/lon).
    `prior` is the prediction this fix was measured against (from the previous posterior of the segment),
    relative to the same lat/lon: what the smoother needs; None at a segment's start."""

    t: float
    lat: float
    lon: float
    east: Axis
    north: Axis
    state: PoseState
    segment: int
    prior: tuple[Axis, Axis] | None = None
    slow_var: float = 0.0  # per axis: the receiver's stated error that fix-to-fix scatter does not show

    @property
    def h_std(self) -> float:
        return math.sqrt(max(self.east.a + self.north.a + 2.0 * self.slow_var, 0.0))

    @property
    def ve(self) -> float:
        return self.east.v

    @property
    def vn(self) -> float:
        return self.north.v


@dataclass
class FilterStats:
    fixes: int = 0
    updates: int = 0
    outliers: int = 0
    no_fix: int = 0
    estimated: int = 0
    resets: dict[str, int] = field(default_factory=dict)


def _cov(axis: Axis) -> tuple[float, float, float, float]:
    """An axis's velocity and covariance (everything but its position)."""
    return axis.v, axis.a, axis.b, axis.c


class PositionFilter:
    """Thread-safe: the GNSS reader calls update(), the pipeline calls position_at()/utc_at()."""

    def __init__(self, cfg: GnssConfig | None = None) -> None:
        self.cfg = cfg or GnssConfig()
        self.stats = FilterStats()
        self._lock = threading.Lock()
        self._axes: tuple[Axis, Axis] | None = None  # east, north in the current frame
        self._frame: LocalFrame | None = None
        self._history: deque[_Posterior] = deque()
        self._times: deque[float] = deque()
        self._segment = 0
        self._last_t: float | None = None
        self._last_fix_t: float | None = None
        self._last_utc: dt.datetime | None = None
        self._utc_ref: tuple[float, dt.datetime] | None = None
        self._rejections = 0
        self._jumped_to: Fix | None = None  # the last far fix, until the next confirms it (a jump) or not (a glitch)
        self._started = False
        self._noise = FixNoiseScale(self.cfg.fix_noise_window)
        self._slow_var = 0.0
        self._smoothed: list[_Posterior | None] = []  # aligned with _history, filled from the newest back

    # --- public API

    def update(self, fix: Fix) -> Pose | None:
        """Feed one epoch; returns the filtered pose at its time (None before the first fix)."""
        with self._lock:
            return self._update(fix)

    def position_at(self, t_mono: float) -> Pose | None:
        """The pose at T_MONO: smoothed with every fix kept (config `smooth`), else the filter's own."""
        with self._lock:
            return self._position_at(t_mono, smoothed=self.cfg.smooth)

    def newest_fix_mono(self) -> float | None:
        """The time of the newest fix the filter has taken in (None before any)."""
        with self._lock:
            return self._times[-1] if self._times else None

    @property
    def fix_noise_scale(self) -> float:
        """The factor on the receiver's position variance the filter uses now (1 until learned)."""
        return self._noise.scale

    def utc_at(self, t_mono: float) -> dt.datetime | None:
        with self._lock:
            if self._utc_ref is None or not math.isfinite(t_mono):
                return None
            t_ref, utc_ref = self._utc_ref
            try:
                return utc_ref + dt.timedelta(seconds=t_mono - t_ref)
            except OverflowError:  # a time millennia away from the last fix has no calendar date
                return None

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
        if fix.mode == 0 or fix.lat is None or fix.lon is None or not math.isfinite(fix.lat + fix.lon):
            self.stats.no_fix += 1
            return self._position_at(t)
        if fix.estimated:
            self.stats.estimated += 1  # the receiver coasting: our own prediction is as good
            return self._position_at(t)
        self.stats.fixes += 1
        last_fix_t = self._last_fix_t
        if self._axes is None or last_fix_t is None:
            return self._start(fix, "reset" if self._started else "ok")
        if t <= last_fix_t:
            return self._position_at(t)  # the same epoch twice
        if t - last_fix_t > self.cfg.reset_gap_s:
            self._reset("gap")
            return self._start(fix, "reset")
        return self._measure(fix, t - last_fix_t)

    def _went_backwards(self, fix: Fix) -> bool:
        if self._last_t is not None and fix.t_mono < self._last_t:
            return True
        return fix.utc is not None and self._last_utc is not None and fix.utc < self._last_utc

    def _reset(self, reason: str) -> None:
        if self._axes is not None or self._history:
            self.stats.resets[reason] = self.stats.resets.get(reason, 0) + 1
            log.info("position filter reset: %s", reason)
        self._axes = None
        self._frame = None
        self._last_fix_t = None
        self._rejections = 0
        self._jumped_to = None
        if reason == "time_backwards":
            self._history.clear()
            self._times.clear()
            self._smoothed.clear()
            self._last_t = None
            self._last_utc = None

    def _variance(self, fix: Fix, lat: float, lon: float, frame: LocalFrame, velocity: tuple[float, float] | None
                  ) -> tuple[float, float]:
        """Per-axis variances of a fix's position (at LAT, LON): (the part that scatters from fix to fix, the
        receiver's stated total). The first is the stated figure times the scale learned so far (this fix with its
        VELOCITY included); it is what the filter can average away. The rest of the stated error, when the scale is
        below 1, changes too slowly to show between fixes (multipath, atmosphere): no filtering removes it,
        so it stays in h_std and widens the gate (a receiver's slow error does step when satellites change)."""
        stated = self._sigma_m(fix) ** 2
        if self.cfg.adapt_fix_noise:
            self._noise.observe(fix.t_mono, lat, lon, velocity, stated, frame.to_enu)
        return stated * self._noise.scale, stated

    def _sigma_m(self, fix: Fix) -> float:
        """Per-axis standard deviation of a fix's position, as the receiver states it."""
        eph = fix.eph_m
        if (eph is None or not math.isfinite(eph)) and fix.hdop is not None:
            eph = fix.hdop * self.cfg.uere_m
        if eph is None or not math.isfinite(eph):
            eph = 3.0 * self.cfg.uere_m  # nothing said: assume a poor fix
        return max(eph / math.sqrt(2.0), _MIN_SIGMA_M)

    def _receiver_velocity(self, fix: Fix) -> tuple[float, float] | None:
        if not self.cfg.use_receiver_velocity or fix.speed_mps is None:
            return None
        if fix.track_deg is None:
            return (0.0, 0.0) if fix.speed_mps < 0.2 else None
        heading = math.radians(fix.track_deg)
        return fix.speed_mps * math.sin(heading), fix.speed_mps * math.cos(heading)

    def _start(self, fix: Fix, state: PoseState) -> Pose:
        lat, lon = fix_position(fix)
        frame = self._frame = LocalFrame(lat, lon)
        velocity = self._receiver_velocity(fix)
        r, stated = self._variance(fix, lat, lon, frame, velocity)
        self._slow_var = max(stated - r, 0.0)
        if velocity is None:
            east, north = Axis(0.0, 0.0, r, 0.0, _UNKNOWN_SPEED_VAR), Axis(0.0, 0.0, r, 0.0, _UNKNOWN_SPEED_VAR)
        else:
            rv = self.cfg.velocity_sigma_mps**2
            east, north = Axis(0.0, velocity[0], r, 0.0, rv), Axis(0.0, velocity[1], r, 0.0, rv)
        self._axes = (east, north)
        self._started = True
        self._segment += 1
        return self._commit(fix.t_mono, state)

    def _measure(self, fix: Fix, dt_s: float) -> Pose:
        """Take in FIX, DT_S after the segment's last one."""
        axes, frame = self._running()
        q = self.cfg.process_accel_mps2**2
        east, north = axes[0].predicted(dt_s, q), axes[1].predicted(dt_s, q)
        prior = (Axis(east.p, east.v, east.a, east.b, east.c), Axis(north.p, north.v, north.a, north.b, north.c))
        lat, lon = fix_position(fix)
        z_east, z_north = frame.to_enu(lat, lon)
        velocity = self._receiver_velocity(fix)
        r, stated = self._variance(fix, lat, lon, frame, velocity)
        # The same epoch's velocity first (the order of two independent updates does not change the result):
        # it carries the turn or the braking since the last fix into the predicted position, so the position
        # is judged against where the vehicle went, not where a constant velocity would have taken it.
        if velocity is not None:
            rv = self.cfg.velocity_sigma_mps**2
            east.update_velocity(velocity[0], rv)
            north.update_velocity(velocity[1], rv)
        y_east, y_north = z_east - east.p, z_north - north.p
        if math.hypot(y_east, y_north) > self.cfg.reset_jump_m:
            if (first := self._jump_confirmed(fix, frame, z_east, z_north)) is not None:
                # The new segment starts at the jump's first fix: the frames between it and this one were
                # taken there, not on the prediction the glitch rule gave them (a defect in view then was placed
                # a whole jump away). That prediction is dropped from the history.
                if self._times and self._times[-1] == first.t_mono:
                    self._history.pop()
                    self._times.pop()
                self._reset("jump")
                self._start(first, "reset")
                return replace(self._measure(fix, fix.t_mono - first.t_mono), state="reset")
            # A lone jump is a glitch (one bad solution 500 m off) until the next fix lands near it: the
            # track goes on from the prediction, where restarting at the glitch put a defect there.
            self.stats.outliers += 1
            self._axes = (east, north)
            return self._commit(fix.t_mono, "ok", prior)
        self._jumped_to = None
        # Mahalanobis distance of the position innovation; the axes are uncorrelated, so S is diagonal.
        r_gate = max(r, stated)
        d2 = y_east * y_east / (east.a + r_gate) + y_north * y_north / (north.a + r_gate)
        if d2 > self.cfg.gate_chi2:
            self.stats.outliers += 1
            self._rejections += 1
            if self._rejections >= self.cfg.max_rejections:
                self._reset("outliers")
                return self._start(fix, "reset")
            # Weighed down, not dropped: its variance grows until its innovation sits at the gate. A blunder
            # moves the track by at most the gate's worth; a receiver whose solution jumped and stays there
            # (its slow error stepping as satellites change) pulls the track over rather than being ignored.
            k = d2 / self.cfg.gate_chi2
            r = max(r, ((east.a + north.a) / 2 + r_gate) * k - (east.a + north.a) / 2)
        else:
            self._rejections = 0
            self.stats.updates += 1
        east.update_position(z_east, r)
        north.update_position(z_north, r)
        self._slow_var = max(stated - r, 0.0)
        if not (east.finite() and north.finite()):
            self._reset("non_finite")
            return self._start(fix, "reset")
        self._axes = (east, north)
        return self._commit(fix.t_mono, "ok", prior)

    def _jump_confirmed(self, fix: Fix, frame: LocalFrame, z_east: float, z_north: float) -> Fix | None:
        """The jump's first fix when this far fix is the second in a row near the same place: the receiver (or
        the vehicle, off a ferry or out of a garage) really is there. None otherwise."""
        before, self._jumped_to = self._jumped_to, fix
        if before is None:
            return None
        b_east, b_north = frame.to_enu(*fix_position(before))
        return before if math.hypot(z_east - b_east, z_north - b_north) <= self.cfg.reset_jump_m else None

    def unsettled(self) -> bool:
        """Whether the newest fix lies a jump away and the next decides: a glitch, or where the vehicle is. A
        defect placed meanwhile could be placed a whole jump from where the filter will say it was."""
        with self._lock:
            return self._jumped_to is not None

    def _running(self) -> tuple[tuple[Axis, Axis], LocalFrame]:
        """The running segment's axes and frame (_start sets both, _reset clears both)."""
        if self._axes is None or self._frame is None:
            raise RuntimeError("the position filter has no running segment")
        return self._axes, self._frame

    def _commit(self, t: float, state: PoseState, prior: tuple[Axis, Axis] | None = None) -> Pose:
        (east, north), frame = self._running()
        self._last_fix_t = t
        lat, lon = frame.to_geodetic(east.p, north.p)
        if prior is not None:  # relative to this posterior, like its axes (the prior is _measure's own copy)
            prior[0].p -= east.p
            prior[1].p -= north.p
        if math.hypot(east.p, north.p) > self.cfg.reanchor_m:
            self._frame = LocalFrame(lat, lon)
            east.p = north.p = 0.0
        post = _Posterior(t, lat, lon, east.relative(), north.relative(), state, self._segment, prior, self._slow_var)
        self._history.append(post)
        self._times.append(t)
        while self._times and self._times[0] < t - self.cfg.history_s:
            self._history.popleft()
            self._times.popleft()
        self._smoothed.clear()
        return self._pose(post.lat, post.lon, post.ve, post.vn, post.h_std, state, t, post.segment)

    # --- queries

    def _position_at(self, t: float, smoothed: bool = False) -> Pose | None:
        if not self._history or not math.isfinite(t):
            return None
        i = bisect.bisect_right(self._times, t)
        if i == 0:
            if self._history[0].prior is not None:
                return None  # older than the history kept
            # Before the first fix (a cold start): carried back from it on its velocity, as far as forwards.
            return self._extrapolate(self._smoothed_at(0) if smoothed else self._history[0], t)
        a = self._smoothed_at(i - 1) if smoothed else self._history[i - 1]
        if t == a.t:
            return self._pose(a.lat, a.lon, a.ve, a.vn, a.h_std, a.state, t, a.segment)
        if i == len(self._history):
            return self._extrapolate(a, t)
        b = self._smoothed_at(i) if smoothed else self._history[i]
        if b.segment == a.segment:
            return self._interpolate(a, b, t)
        # In a gap that reset the filter (a tunnel): from whichever side is nearer in uncertainty.
        return min(self._extrapolate(a, t), self._extrapolate(b, t), key=lambda pose: pose.h_std_m)

    def _smoothed_at(self, i: int) -> _Posterior:
        """The smoothed posterior I of the history: the RTS pass runs back from the newest state as far as I
        (the cache lives until the next fix). Positions go through one frame at the newest state."""
        if not self._smoothed:
            self._smoothed = [None] * len(self._history)
        cache = self._smoothed
        if (cached := cache[i]) is not None:
            return cached
        newest = self._history[-1]
        frame = LocalFrame(newest.lat, newest.lon)
        k = i
        while k + 1 < len(cache) and cache[k + 1] is None:
            k += 1
        # cache[k + 1] is known (or k is the newest state); walk back from k to i.
        for j in range(k, i - 1, -1):
            post = self._history[j]
            later = cache[j + 1] if j + 1 < len(cache) else None
            prior = self._history[j + 1].prior if later is not None else None  # a smoothed state keeps its prior
            if later is None or later.segment != post.segment or prior is None:
                cache[j] = post  # the newest state of its segment: nothing after it to learn from
                continue
            e0, n0 = frame.to_enu(post.lat, post.lon)
            e1, n1 = frame.to_enu(self._history[j + 1].lat, self._history[j + 1].lon)
            es, ns = frame.to_enu(later.lat, later.lon)
            prior_e, prior_n = prior
            dt_s = later.t - post.t
            east = Axis(e0, post.east.v, post.east.a, post.east.b, post.east.c).smoothed(
                Axis(e1 + prior_e.p, prior_e.v, prior_e.a, prior_e.b, prior_e.c), Axis(es, *_cov(later.east)), dt_s)
            north = Axis(n0, post.north.v, post.north.a, post.north.b, post.north.c).smoothed(
                Axis(n1 + prior_n.p, prior_n.v, prior_n.a, prior_n.b, prior_n.c), Axis(ns, *_cov(later.north)), dt_s)
            if not (east.finite() and north.finite()):
                cache[j] = post
                continue
            lat, lon = frame.to_geodetic(east.p, north.p)
            cache[j] = _Posterior(post.t, lat, lon, east.relative(), north.relative(), post.state, post.segment,
                                  post.prior, post.slow_var)
        if (smoothed := cache[i]) is None:  # the walk back ends at i: it is filled
            raise RuntimeError(f"smoothing left state {i} of the history empty")
        return smoothed

    def _state_after(self, since_fix_s: float) -> PoseState:
        if since_fix_s <= self.cfg.ok_window_s:
            return "ok"
        return "predicting" if since_fix_s <= self.cfg.stale_after_s else "stale"

    def _extrapolate(self, a: _Posterior, t: float) -> Pose:
        """A's state carried to T on its velocity, forwards or (T before A) backwards in time."""
        dt_s = t - a.t
        span_s = abs(dt_s)
        moving_s = math.copysign(min(span_s, self.cfg.stale_after_s), dt_s)  # past the stale limit it stops
        frame = LocalFrame(a.lat, a.lon)
        lat, lon = frame.to_geodetic(a.ve * moving_s, a.vn * moving_s)
        q = self.cfg.coast_accel_mps2**2
        # Backwards, F^-1 = [[1, -dt], [0, 1]]: the same growth of the position variance with the cross term negated.
        sign = 1.0 if dt_s >= 0 else -1.0
        east, north = (Axis(0.0, 0.0, axis.a, sign * axis.b, axis.c).predicted(span_s, q) for axis in (a.east, a.north))
        h_std = math.sqrt(max(east.a + north.a + 2.0 * a.slow_var, 0.0))
        return self._pose(lat, lon, a.ve, a.vn, h_std, self._state_after(span_s), t, a.segment)

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
        h_std = (1 - s) * a.h_std + s * b.h_std
        state = self._state_after(min(t - a.t, b.t - t))
        return self._pose(lat, lon, ve, vn, h_std, state, t, a.segment)

    def _pose(self, lat: float, lon: float, ve: float, vn: float, h_std: float,
              state: PoseState, t: float, segment: int) -> Pose:
        speed = math.hypot(ve, vn)
        heading = compass_deg(math.degrees(math.atan2(ve, vn))) if speed > self.cfg.heading_min_speed_mps else None
        return Pose(lat=lat, lon=lon, speed_mps=speed, heading_deg=heading, h_std_m=h_std, state=state, t_mono=t,
                    segment=segment)
