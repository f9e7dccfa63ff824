"""The defect field: potholes and cracks on the network's streets that appear, grow and get repaired over days.

Deterministic from its generator: `DefectField.initial` places the defects that exist when the simulation
starts, `evolve_day(day)` adds the day's new ones and schedules the day's repairs. Times are simulated seconds
from the start. Defects keep MIN_SPACING_M apart along a street, more than the server's largest merge gate
(12 m), so that "two map defects for one pothole" and "one map defect for two potholes" can be told apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fleet_sim.network import RoadNetwork

DAY_S = 86_400.0
MIN_SPACING_M = 15.0


@dataclass(frozen=True)
class FieldParams:
    potholes_per_km: float = 1.5      # at the start, per km of street
    cracks_per_km: float = 0.6
    new_per_km_day: float = 0.08      # new defects per km per day (two thirds potholes)
    repair_per_day: float = 0.04      # chance a defect is repaired on a given day
    growth_per_day: float = 0.01      # relative growth of a defect's size per day (potholes); cracks lengthen
    long_crack_share: float = 0.4     # share of cracks that are long longitudinal lines (4-12 m)


@dataclass
class Defect:
    id: int
    cls: str                # "pothole" | "crack"
    edge: int
    s: float                # metres from the edge's node A
    left: float             # metres left of the centre line, facing A -> B (a 7 m street: -3.5 .. 3.5)
    width: float            # at appearance, metres
    length: float           # along `axis_deg` for cracks
    axis_deg: float         # long axis relative to the street's direction A -> B (cracks), degrees
    appeared: float         # simulated seconds
    repaired: float | None = None
    growth_per_day: float = 0.0

    def exists(self, t: float) -> bool:
        return self.appeared <= t and (self.repaired is None or t < self.repaired)

    def size_at(self, t: float) -> tuple[float, float]:
        g = 1.0 + self.growth_per_day * max(0.0, t - self.appeared) / DAY_S
        return min(self.width * g, 3.0), min(self.length * g, 20.0)

    def centre(self, net: RoadNetwork) -> tuple[float, float]:
        return net.edges[self.edge].point(self.s, self.left)

    def ends(self, net: RoadNetwork, t: float) -> tuple[tuple[float, float], tuple[float, float]]:
        """A crack's two ends (a pothole's are its centre twice)."""
        cx, cy = self.centre(net)
        if self.cls != "crack":
            return (cx, cy), (cx, cy)
        e = net.edges[self.edge]
        theta = math.radians(e.bearing_deg + self.axis_deg)
        half = self.size_at(t)[1] / 2
        dx, dy = math.sin(theta) * half, math.cos(theta) * half
        return (cx - dx, cy - dy), (cx + dx, cy + dy)


@dataclass
class DefectField:
    net: RoadNetwork
    rng: np.random.Generator
    params: FieldParams = field(default_factory=FieldParams)
    defects: list[Defect] = field(default_factory=list)

    @classmethod
    def initial(cls, net: RoadNetwork, rng: np.random.Generator, params: FieldParams | None = None) -> DefectField:
        f = cls(net, rng, params or FieldParams())
        n_p = rng.poisson(f.params.potholes_per_km * net.length_km)
        n_c = rng.poisson(f.params.cracks_per_km * net.length_km)
        for klass in ["pothole"] * n_p + ["crack"] * n_c:
            # Existing damage has been there a while: its age only sets how far it has grown.
            f._add(klass, appeared=-float(rng.uniform(0, 60)) * DAY_S)
        return f

    def _add(self, klass: str, appeared: float) -> Defect | None:
        rng = self.rng
        for _ in range(20):  # a free spot on a random street (long streets get proportionally more)
            lengths = np.array([e.length for e in self.net.edges])
            edge = int(rng.choice(len(lengths), p=lengths / lengths.sum()))
            length_e = lengths[edge]
            if length_e < 2 * MIN_SPACING_M:
                continue
            if klass == "pothole":
                width = float(rng.uniform(0.3, 1.0))
                length = float(width * rng.uniform(0.7, 1.3))
                axis, growth = 0.0, self.params.growth_per_day
            elif rng.random() < self.params.long_crack_share:
                length, width = float(rng.uniform(4.0, 12.0)), float(rng.uniform(0.05, 0.3))
                axis, growth = float(rng.normal(0, 8)), self.params.growth_per_day / 2
            else:
                length, width = float(rng.uniform(0.8, 2.5)), float(rng.uniform(0.1, 0.8))
                axis, growth = float(rng.uniform(0, 180)), self.params.growth_per_day / 2
            margin = MIN_SPACING_M / 2 + length / 2
            if length_e < 2 * margin:
                continue
            s = float(rng.uniform(margin, length_e - margin))
            if any(d.edge == edge and abs(d.s - s) < MIN_SPACING_M + (d.length + length) / 2
                   and (d.repaired is None or d.repaired > appeared) for d in self.defects):
                continue
            # Defects sit in the wheel paths and lanes, either direction's: -3 .. 3 m from the centre line.
            left = float(rng.uniform(-3.0, 3.0))
            d = Defect(len(self.defects), klass, edge, s, left, width, length, axis, appeared,
                       growth_per_day=growth)
            self.defects.append(d)
            return d
        return None

    def evolve_day(self, day: int) -> tuple[list[Defect], list[Defect]]:
        """Day DAY's changes (day 0 is the first simulated day): new defects appear at random times of the day,
        and existing ones are repaired (road crews work 7:00-16:00). Returns (appeared, repaired)."""
        start = day * DAY_S
        repaired = []
        for d in self.defects:
            if d.exists(start) and self.rng.random() < self.params.repair_per_day:
                d.repaired = start + float(self.rng.uniform(7, 16)) * 3600.0
                repaired.append(d)
        appeared = []
        for _ in range(self.rng.poisson(self.params.new_per_km_day * self.net.length_km)):
            klass = "pothole" if self.rng.random() < 2 / 3 else "crack"
            d = self._add(klass, appeared=start + float(self.rng.uniform(0, DAY_S)))
            if d is not None:
                appeared.append(d)
        return appeared, repaired
