"""A synthetic drive with known truth, for the filter's accuracy test and benchmark.

50 km/h along straights and curves, a stop, and a 30 s tunnel on a straight. The "receiver" reports the true
position plus Gaussian noise (sigma per axis), and a Doppler-like speed/track with small noise; inside the
tunnel it reports no fix.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from edge_agent.gnss.epochs import Fix, virtual_mono
from edge_agent.gnss.kalman import LocalFrame

CRUISE_MPS = 50 / 3.6
START_UTC = dt.datetime(2026, 6, 1, 8, 0, 0, tzinfo=dt.UTC)
ORIGIN = (48.137, 11.575)
# (start_s, end_s, acceleration m/s^2, turn rate deg/s)
PROFILE = [
    (0, 60, 0.0, 0.0),
    (60, 90, 0.0, 3.0),       # a 90 degree right-hand curve (positive turn rate = clockwise)
    (90, 120, 0.0, 0.0),
    (120, 130, -CRUISE_MPS / 10, 0.0),  # brake to a stop
    (130, 150, 0.0, 0.0),     # standing
    (150, 160, CRUISE_MPS / 10, 0.0),
    (160, 200, 0.0, 0.0),
    (200, 230, 0.0, 0.0),     # the tunnel (no fixes)
    (230, 290, 0.0, 0.0),
    (290, 335, 0.0, -2.0),
    (335, 360, 0.0, 0.0),
]
TUNNEL = (200.0, 230.0)
DURATION_S = 360.0


@dataclass
class Truth:
    t: np.ndarray
    east: np.ndarray
    north: np.ndarray
    ve: np.ndarray
    vn: np.ndarray

    def at(self, t: float) -> tuple[float, float, float, float]:
        return (float(np.interp(t, self.t, self.east)), float(np.interp(t, self.t, self.north)),
                float(np.interp(t, self.t, self.ve)), float(np.interp(t, self.t, self.vn)))


def truth_track(step_s: float = 0.01) -> Truth:
    n = int(DURATION_S / step_s) + 1
    t = np.arange(n) * step_s
    east, north, ve, vn = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    speed, heading = CRUISE_MPS, 90.0
    for i in range(n):
        accel, turn = next(((a, r) for s, e, a, r in PROFILE if s <= t[i] < e), (0.0, 0.0))
        if i:
            east[i] = east[i - 1] + ve[i - 1] * step_s
            north[i] = north[i - 1] + vn[i - 1] * step_s
        speed = max(0.0, speed + accel * step_s)
        heading = (heading + turn * step_s) % 360.0
        ve[i], vn[i] = speed * math.sin(math.radians(heading)), speed * math.cos(math.radians(heading))
    return Truth(t, east, north, ve, vn)


def in_tunnel(t: float) -> bool:
    return TUNNEL[0] <= t < TUNNEL[1]


def noisy_fixes(truth: Truth, rate_hz: float, sigma_m: float = 3.0, seed: int = 1,
                speed_sigma_mps: float = 0.1) -> list[tuple[float, Fix]]:
    """(t_since_start, Fix) at rate_hz; Fix.t_mono on the recordings' virtual clock."""
    rng = np.random.default_rng(seed)
    frame = LocalFrame(*ORIGIN)
    t0 = virtual_mono(START_UTC)
    out = []
    for k in range(int(DURATION_S * rate_hz)):
        t = k / rate_hz
        utc = START_UTC + dt.timedelta(seconds=t)
        if in_tunnel(t):
            out.append((t, Fix(utc, t0 + t, 0, None, None, None, None, None, None, None, 3)))
            continue
        east, north, ve, vn = truth.at(t)
        lat, lon = frame.to_geodetic(east + rng.normal(0, sigma_m), north + rng.normal(0, sigma_m))
        ve_m, vn_m = ve + rng.normal(0, speed_sigma_mps), vn + rng.normal(0, speed_sigma_mps)
        speed = math.hypot(ve_m, vn_m)
        track = math.degrees(math.atan2(ve_m, vn_m)) % 360.0 if speed > 0.3 else None
        out.append((t, Fix(utc, t0 + t, 3, lat, lon, 500.0, speed, track, sigma_m * math.sqrt(2), 1.0, 9)))
    return out


def horizontal_error(frame: LocalFrame, truth: Truth, t: float, lat: float, lon: float) -> float:
    east, north = frame.to_enu(lat, lon)
    te, tn, _, _ = truth.at(t)
    return math.hypot(east - te, north - tn)


def accuracy(rate_hz: float, cfg=None, seed: int = 1) -> dict[str, float]:
    """Raw and filtered RMS error outside the tunnel, and the worst error in the tunnel's first 10 s."""
    from edge_agent.gnss.kalman import PositionFilter

    truth = truth_track()
    frame = LocalFrame(*ORIGIN)
    pf = PositionFilter(cfg)
    raw, filtered = [], []
    t0 = virtual_mono(START_UTC)
    for t, fix in noisy_fixes(truth, rate_hz, seed=seed):
        pose = pf.update(fix)
        if fix.mode == 0 or pose is None or t < 5.0:
            continue
        raw.append(horizontal_error(frame, truth, t, fix.lat, fix.lon))
        filtered.append(horizontal_error(frame, truth, t, pose.lat, pose.lon))
        if abs(t - (TUNNEL[0] - 1 / rate_hz)) < 1e-6:
            tunnel = []
            for k in range(101):  # the 10 s after the last fix before the tunnel
                tt = t + k * 0.1
                p = pf.position_at(t0 + tt)
                tunnel.append(horizontal_error(frame, truth, tt, p.lat, p.lon))
    rms_raw = float(np.sqrt(np.mean(np.square(raw))))
    rms_filtered = float(np.sqrt(np.mean(np.square(filtered))))
    return {"rms_raw_m": rms_raw, "rms_filtered_m": rms_filtered, "ratio": rms_filtered / rms_raw,
            "tunnel_10s_max_m": max(tunnel)}
