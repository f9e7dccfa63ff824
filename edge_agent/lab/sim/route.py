"""The simulated route and the vehicle's motion along it.

A route is a centre line of straights and constant-radius curves in a local east/north plane (metres), tied
to a real place by `geo_origin`. The vehicle drives in the right-hand lane at 8-15 m/s, slows for curves,
and stops once (a traffic light). Everything is drawn from the seed, so a drive is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import overload

import numpy as np

# Munich, north-west of the centre: a real city area for realistic coordinates.
GEO_ORIGIN = (48.1600, 11.5200)
STEP_M = 0.5             # centre-line sampling
SIM_DT_S = 0.02          # motion integration step
A_LAT_MAX = 1.6          # comfortable lateral acceleration in curves, m/s^2
A_ACCEL = 1.2
A_BRAKE = 1.8
SPEED_MIN, SPEED_MAX = 8.0, 15.0


@dataclass
class Route:
    """Centre line sampled every STEP_M: s (m), east, north, theta (direction of travel, radians from east,
    counter-clockwise) and curvature (1/m, positive = left)."""

    s: np.ndarray
    east: np.ndarray
    north: np.ndarray
    theta: np.ndarray
    curvature: np.ndarray

    @property
    def length(self) -> float:
        return float(self.s[-1])

    @overload
    def at(self, s: float) -> tuple[float, float, float]: ...

    @overload
    def at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def at(self, s: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float, np.ndarray | float]:
        """(east, north, theta) at arc length(s), interpolated: floats for one s, arrays for an array."""
        theta = np.interp(s, self.s, np.unwrap(self.theta))
        return np.interp(s, self.s, self.east), np.interp(s, self.s, self.north), theta


def random_route(rng: np.random.Generator, length_m: float) -> Route:
    """Straights of 60-250 m alternating with left/right curves of 60-300 m radius turning 15-90 degrees."""
    kappas: list[np.ndarray] = []
    total = 0.0
    straight = True
    while total < length_m + 200:
        if straight:
            seg = rng.uniform(60, 250)
            k = 0.0
        else:
            radius = rng.uniform(60, 300)
            seg = radius * math.radians(rng.uniform(15, 90))
            k = float(rng.choice([-1, 1])) / radius
        n = max(1, int(seg / STEP_M))
        kappas.append(np.full(n, k))
        total += n * STEP_M
        straight = not straight
    kappa = np.concatenate(kappas)
    theta0 = rng.uniform(0, 2 * math.pi)
    theta = theta0 + np.concatenate([[0.0], np.cumsum(kappa[:-1] * STEP_M)])
    east = np.concatenate([[0.0], np.cumsum(np.cos(theta[:-1]) * STEP_M)])
    north = np.concatenate([[0.0], np.cumsum(np.sin(theta[:-1]) * STEP_M)])
    s = np.arange(len(kappa)) * STEP_M
    return Route(s, east, north, np.mod(theta, 2 * math.pi), kappa)


@dataclass
class Motion:
    """The vehicle's progress: t (s since the drive's start, may begin negative for the GNSS lead-in),
    s along the route (m) and speed (m/s) at SIM_DT_S steps."""

    t: np.ndarray
    s: np.ndarray
    speed: np.ndarray
    stop_s: float

    def at(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(t, self.t, self.s), np.interp(t, self.t, self.speed)


def _curve_speed_limit(route: Route) -> np.ndarray:
    """Speed limit per centre-line sample: lateral acceleration in curves, braking ahead of them."""
    with np.errstate(divide="ignore"):
        vmax = np.minimum(SPEED_MAX, np.sqrt(A_LAT_MAX / np.maximum(np.abs(route.curvature), 1e-9)))
    for i in range(len(vmax) - 2, -1, -1):
        vmax[i] = min(vmax[i], math.sqrt(vmax[i + 1] ** 2 + 2 * A_BRAKE * STEP_M))
    return vmax


def simulate_motion(rng: np.random.Generator, route: Route, t_start: float, t_end: float, s0: float) -> Motion:
    """Drive from s0: cruise targets drawn in 8-15 m/s every 15-40 s, curve limits, one stop of 5-12 s
    somewhere in the middle third of the drive."""
    vlim = _curve_speed_limit(route)
    n = math.ceil((t_end - t_start) / SIM_DT_S) + 1
    t = t_start + np.arange(n) * SIM_DT_S
    s = np.empty(n)
    v = np.empty(n)
    target = rng.uniform(10, SPEED_MAX)
    next_change = t_start + rng.uniform(15, 40)
    stop_time = t_start + (t_end - t_start) * rng.uniform(0.35, 0.6)
    dwell = rng.uniform(5, 12)
    stop_s = math.inf
    stopped_until = None
    pos, speed = s0, min(target, float(np.interp(s0, route.s, vlim)))
    for i in range(n):
        s[i], v[i] = pos, speed
        now = t[i]
        if now >= next_change:
            target = rng.uniform(SPEED_MIN, SPEED_MAX)
            next_change = now + rng.uniform(15, 40)
        if stop_s == math.inf and now >= stop_time:
            # The light turns red far enough ahead to stop comfortably.
            stop_s = pos + speed * speed / (2 * 0.8 * A_BRAKE) + 5
        desired = min(target, float(np.interp(pos, route.s, vlim)))
        if stopped_until is None and stop_s != math.inf:
            gap = stop_s - pos
            desired = min(desired, math.sqrt(max(gap, 0.0) * 2 * 0.8 * A_BRAKE))
            if gap < 0.3 and speed < 0.2:
                stopped_until = now + dwell
        if stopped_until is not None and now < stopped_until:
            desired = 0.0
        accel = float(np.clip((desired - speed) / SIM_DT_S, -A_BRAKE, A_ACCEL))
        speed = max(0.0, speed + accel * SIM_DT_S)
        pos += speed * SIM_DT_S
    return Motion(t, s, v, stop_s)


def lane_offset(s: np.ndarray | float, lane_centre: float) -> np.ndarray:
    """The vehicle's lateral place on the road (m left of the centre line): the lane centre plus a gentle
    weave of +-0.15 m, as a driver holds a lane."""
    s = np.asarray(s, dtype=float)
    return lane_centre + 0.15 * np.sin(s / 45.0) + 0.05 * np.sin(s / 13.0 + 1.0)


def lane_offset_slope(s: np.ndarray | float) -> np.ndarray:
    s = np.asarray(s, dtype=float)
    return 0.15 / 45.0 * np.cos(s / 45.0) + 0.05 / 13.0 * np.cos(s / 13.0 + 1.0)


@dataclass
class VehiclePose:
    east: np.ndarray
    north: np.ndarray
    heading: np.ndarray   # direction of travel, radians from east, counter-clockwise


def vehicle_pose(route: Route, s: np.ndarray | float, lane_centre: float) -> VehiclePose:
    """Where the vehicle's reference point (the road point below the camera, on the vehicle's centre line)
    is, and where it points, at route position s."""
    e, n, th = route.at(s)
    d = lane_offset(s, lane_centre)
    # A left offset d shifts the point along the road's left normal; weaving turns the vehicle slightly.
    east = e - np.sin(th) * d
    north = n + np.cos(th) * d
    return VehiclePose(east, north, th + np.arctan(lane_offset_slope(s)))


def compass_deg(theta: np.ndarray | float) -> np.ndarray:
    """Math angle (radians from east, CCW) -> compass heading (degrees from north, clockwise) in [0, 360)."""
    return np.mod(90.0 - np.degrees(theta), 360.0)
