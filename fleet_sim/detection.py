"""What one vehicle's agent reports from one pass along a street: the per-pass detection model.

For every defect on the street: found with a probability by class and by how far it lies beside the vehicle's
path; placed with the vehicle's GNSS error plus the camera side's own error; sized with the pipeline's measured
bias. A long crack is seen in pieces. Plus the false events the real pipeline writes: a pothole also reported as
a crack (class confusion), and stray events anywhere. Every number is in fleet_sim.calibration with its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fleet_sim import calibration as cal
from fleet_sim.defects import Defect, DefectField
from fleet_sim.gnss import ErrorTrack
from fleet_sim.network import LANE_OFFSET_M, RoadNetwork
from fleet_sim.vehicles import EdgePass

BEST_FRAME_BEFORE_M = 4.0   # the track's best frame: the defect a few metres ahead, seen whole and near


@dataclass
class Observation:
    """One event: what the agent measured (local east/north metres) and what it really was (truth id, or None)."""

    truth: int | None
    cls: str
    t: float                  # simulated seconds of the best frame
    east: float
    north: float
    h_accuracy_m: float
    width: float
    length: float
    orientation_deg: float | None
    confidence: float
    frames: int
    vehicle_east: float
    vehicle_north: float
    speed_mps: float
    heading_deg: float


def p_detect(cls: str, lateral_m: float, params: cal.DetectionParams) -> float:
    """Chance that one pass finds a defect of CLS lying LATERAL_M beside the vehicle's path."""
    p = dict(params.p_detect).get(cls, 0.0)
    lateral = abs(lateral_m)
    if lateral <= params.full_lateral_m:
        return p
    if lateral >= params.zero_lateral_m:
        return 0.0
    return p * (params.zero_lateral_m - lateral) / (params.zero_lateral_m - params.full_lateral_m)


class DetectionModel:
    def __init__(self, net: RoadNetwork, field: DefectField, rng: np.random.Generator,
                 params: cal.DetectionParams | None = None) -> None:
        self.net = net
        self.field = field
        self.rng = rng
        self.params = params or cal.DetectionParams()
        self._by_edge: dict[int, list[Defect]] = {}

    def index(self) -> None:
        """Rebuild the street -> defects index (after the field changed)."""
        self._by_edge = {}
        for d in self.field.defects:
            self._by_edge.setdefault(d.edge, []).append(d)

    def _travel(self, p: EdgePass, s: float) -> tuple[float, float]:
        """(time at which the vehicle is at S along the street, its speed)."""
        length = self.net.edges[p.edge].length
        along = s if p.forward else length - s
        speed = length / max(p.t_out - p.t_in, 1e-3)
        return p.t_in + along / speed, speed

    def observe(self, p: EdgePass, errors: ErrorTrack) -> list[Observation]:
        edge = self.net.edges[p.edge]
        heading = edge.bearing_deg if p.forward else (edge.bearing_deg + 180.0) % 360.0
        sign = 1.0 if p.forward else -1.0
        out: list[Observation] = []
        rng = self.rng
        for d in self._by_edge.get(p.edge, ()):
            t_pass, _ = self._travel(p, d.s)
            if not d.exists(t_pass):
                continue
            width, length = d.size_at(t_pass)
            if d.cls == "crack":
                out += self._crack(d, p, edge, heading, sign, width, length, errors)
                continue
            lateral = sign * d.left + LANE_OFFSET_M
            if rng.random() >= p_detect("pothole", lateral, self.params):
                continue
            cx, cy = d.centre(self.net)
            obs = self._event(d.id, "pothole", p, d.s, cx, cy, width, length, None, heading, errors)
            out.append(obs)
            if rng.random() < self.params.confusion_per_pothole:
                r, a = rng.uniform(*cal.CONFUSION_OFFSET_M), rng.uniform(0, 2 * math.pi)
                size = float(rng.uniform(0.5, 1.5))
                out.append(self._event(None, "crack", p, d.s, cx + r * math.sin(a), cy + r * math.cos(a),
                                       size * 0.4, size, float(rng.uniform(0, 180)), heading, errors))
        for cls, per_km in self.params.fp_per_km:
            for _ in range(rng.poisson(per_km * edge.length / 1000.0)):
                s = float(rng.uniform(0, edge.length))
                left = sign * (-LANE_OFFSET_M + float(rng.uniform(-2.5, 2.5)))
                x, y = edge.point(s, left)
                size = float(rng.uniform(0.3, 0.8) if cls == "pothole" else rng.uniform(0.8, 2.5))
                orient = None if cls == "pothole" else float(rng.uniform(0, 180))
                out.append(self._event(None, cls, p, s, x, y, size * (1 if cls == "pothole" else 0.3), size,
                                       orient, heading, errors, biased=False))
        out.sort(key=lambda o: o.t)
        return out

    def _crack(self, d: Defect, p: EdgePass, edge, heading: float, sign: float, width: float, length: float,
               errors: ErrorTrack) -> list[Observation]:
        (ax, ay), (bx, by) = d.ends(self.net, self._travel(p, d.s)[0])
        n = max(1, math.ceil(length / self.params.crack_piece_m - 1e-9))
        compass = (edge.bearing_deg + d.axis_deg) % 180.0
        out = []
        for i in range(n):
            f = (i + 0.5) / n
            x, y = ax + (bx - ax) * f, ay + (by - ay) * f
            # How far the piece lies beside the path, and where along the street it is passed.
            ux, uy = (edge.bx - edge.ax) / edge.length, (edge.by - edge.ay) / edge.length
            s = (x - edge.ax) * ux + (y - edge.ay) * uy
            left = -(x - edge.ax) * uy + (y - edge.ay) * ux
            if self.rng.random() >= p_detect("crack", sign * left + LANE_OFFSET_M, self.params):
                continue
            out.append(self._event(d.id, "crack", p, s, x, y, width, length / n, compass, heading, errors))
        return out

    def _event(self, truth: int | None, cls: str, p: EdgePass, s: float, x: float, y: float, width: float,
               length: float, orientation: float | None, heading: float, errors: ErrorTrack,
               biased: bool = True) -> Observation:
        rng = self.rng
        t, speed = self._travel(p, s)
        t -= BEST_FRAME_BEFORE_M / max(speed, 0.5)
        ge, gn = errors.at(t)
        cs = self.params.camera_sigma_m
        edge = self.net.edges[p.edge]
        vs = s - BEST_FRAME_BEFORE_M if p.forward else s + BEST_FRAME_BEFORE_M
        vx, vy = edge.point(min(max(vs, 0.0), edge.length), -LANE_OFFSET_M if p.forward else LANE_OFFSET_M)
        if biased:
            rw, rl = cal.POTHOLE_SIZE_RATIO if cls == "pothole" else cal.CRACK_SIZE_RATIO
        else:
            rw = rl = 1.0
        spread = math.exp(rng.normal(0, cal.SIZE_SPREAD))
        if orientation is not None:
            orientation = (orientation + rng.normal(0, cal.ORIENTATION_SIGMA_DEG)) % 180.0
        h = max(0.5, rng.normal(*cal.H_ACCURACY_M))
        return Observation(truth, cls, t, x + ge + rng.normal(0, cs), y + gn + rng.normal(0, cs), h,
                           min(50.0, width * rw * spread), min(50.0, length * rl * spread), orientation,
                           float(np.clip(rng.normal(*cal.CONFIDENCE), 0.2, 0.99)),
                           int(np.clip(round(rng.normal(*cal.FRAMES)), 3, 60)), vx + ge, vy + gn, speed, heading)
