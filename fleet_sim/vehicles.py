"""Vehicles on routes and shifts: which streets each vehicle drives when.

Each vehicle has a home route (a delivery round or a bus line) that it drives on most working days, sometimes
a different one; a shift starts at its own hour with some day-to-day scatter. Speeds are drawn per street.
`Fleet.plan_day(day)` gives the day's street passes, in time order per vehicle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fleet_sim.defects import DAY_S
from fleet_sim.network import RoadNetwork


@dataclass(frozen=True)
class FleetParams:
    route_km: tuple[float, float] = (6.0, 14.0)   # length of a day's drive with the camera on
    own_route_share: float = 0.8                  # days on the home route; the rest on a random one
    works_per_week: float = 5.5                   # days a vehicle drives, on average
    shift_start_h: tuple[float, float] = (6.0, 14.0)
    speed_mps: tuple[float, float] = (7.0, 13.0)


@dataclass(frozen=True)
class EdgePass:
    """One vehicle driving one street, from T_IN to T_OUT (simulated seconds)."""

    vehicle: int
    edge: int
    forward: bool       # A -> B
    t_in: float
    t_out: float


@dataclass
class Vehicle:
    index: int
    device_id: str
    home_route: list[tuple[int, bool]]
    shift_start_h: float


@dataclass
class Fleet:
    net: RoadNetwork
    rng: np.random.Generator
    vehicles: list[Vehicle]
    params: FleetParams = field(default_factory=FleetParams)

    @classmethod
    def create(cls, net: RoadNetwork, rng: np.random.Generator, n: int, prefix: str,
               params: FleetParams | None = None) -> Fleet:
        p = params or FleetParams()
        vehicles = []
        for i in range(n):
            start = int(rng.integers(len(net.nodes)))
            route = net.route(rng, start, float(rng.uniform(*p.route_km)) * 1000.0)
            vehicles.append(Vehicle(i, f"{prefix}-{i:04d}", route, float(rng.uniform(*p.shift_start_h))))
        return cls(net, rng, vehicles, p)

    def plan_day(self, day: int) -> list[list[EdgePass]]:
        """Per vehicle, the street passes of DAY (empty on its days off)."""
        out: list[list[EdgePass]] = []
        for v in self.vehicles:
            if self.rng.random() > self.params.works_per_week / 7.0:
                out.append([])
                continue
            if self.rng.random() < self.params.own_route_share:
                route = v.home_route
            else:
                start = int(self.rng.integers(len(self.net.nodes)))
                route = self.net.route(self.rng, start, float(self.rng.uniform(*self.params.route_km)) * 1000.0)
            t = day * DAY_S + (v.shift_start_h + float(self.rng.normal(0, 0.5))) * 3600.0
            passes = []
            for eid, forward in route:
                dt = self.net.edges[eid].length / float(self.rng.uniform(*self.params.speed_mps))
                passes.append(EdgePass(v.index, eid, forward, t, t + dt))
                t += dt + float(self.rng.exponential(8.0))  # junctions, lights
            out.append(passes)
        return out
