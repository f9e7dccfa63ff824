"""The simulated side put together: network, defect field, fleet, GNSS and detection, day by day.

`World.day(d)` evolves the defect field, plans the fleet's drives and returns each vehicle's messages (events
and coverage records, in capture order) with their simulated times; the truth it needs for scoring (defects,
which vehicle passed which defect when, which streets were driven when) accumulates in `World.truth`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from fleet_sim import calibration as cal
from fleet_sim.defects import DefectField, FieldParams
from fleet_sim.detection import DetectionModel
from fleet_sim.gnss import ErrorTrack
from fleet_sim.messages import build_coverage, build_event
from fleet_sim.network import LANE_OFFSET_M, RoadNetwork
from fleet_sim.vehicles import EdgePass, Fleet, FleetParams
from roadmon_contract.geodesy import LocalFrame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorldParams:
    seed: int = 1
    vehicles: int = 60
    grid: tuple[int, int] = (14, 14)
    block_m: float = 160.0
    origin: tuple[float, float] = (48.137, 11.575)
    defects: FieldParams = field(default_factory=FieldParams)
    fleet: FleetParams = field(default_factory=FleetParams)
    detection: cal.DetectionParams = field(default_factory=cal.DetectionParams)
    device_prefix: str = "fsim"
    blind: int = 0      # the first this many vehicles find no defect (a smeared lens), only their stray boxes


@dataclass
class Message:
    t: float            # simulated seconds when the agent wrote it to its outbox
    kind: str           # "event" | "coverage"
    id: str
    payload: dict[str, Any]


@dataclass
class Truth:
    """What really happened, for scoring: defect passes (defect id, t, vehicle), street passes (edge, t),
    detections (event_id -> defect id or None)."""

    defect_passes: list[tuple[int, float, int]] = field(default_factory=list)
    edge_passes: list[tuple[int, float]] = field(default_factory=list)
    detections: dict[str, int | None] = field(default_factory=dict)
    first_detected: dict[int, float] = field(default_factory=dict)


class World:
    def __init__(self, params: WorldParams, epoch: datetime) -> None:
        self.params = params
        self.epoch = epoch
        root = np.random.SeedSequence(params.seed)
        # Independent streams, so that e.g. more vehicles do not change the defect field.
        s_net, s_field, s_fleet, s_gnss, s_det = (np.random.default_rng(s) for s in root.spawn(5))
        self.net = RoadNetwork.grid(s_net, *params.grid, params.block_m)
        self.frame = LocalFrame(*params.origin)
        self.field = DefectField.initial(self.net, s_field, params.defects)
        self.fleet = Fleet.create(self.net, s_fleet, params.vehicles, params.device_prefix, params.fleet)
        self.gnss_rng = s_gnss
        self.detector = DetectionModel(self.net, self.field, s_det, params.detection)
        self.truth = Truth()
        self.seq = [0] * params.vehicles
        self.footprint = dict(cal.FOOTPRINT_M, half_width=params.detection.footprint_half_width_m)

    @property
    def device_ids(self) -> list[str]:
        return [v.device_id for v in self.fleet.vehicles]

    def day(self, d: int) -> list[list[Message]]:
        """Day D's messages per vehicle, each list in time order."""
        self.field.evolve_day(d)
        self.detector.index()
        out = []
        for v, passes in zip(self.fleet.vehicles, self.fleet.plan_day(d), strict=True):
            out.append(self._drive(v.index, v.device_id, passes) if passes else [])
        return out

    def _drive(self, vi: int, device: str, passes: list[EdgePass]) -> list[Message]:
        errors = ErrorTrack(self.gnss_rng, passes[0].t_in, passes[-1].t_out, self.params.detection.gnss_sigma_m)
        msgs: list[Message] = []
        points: list[tuple[float, float, float]] = []  # (t, east, north) since the last coverage record
        next_point = passes[0].t_in
        for p in passes:
            self.truth.edge_passes.append((p.edge, p.t_in))
            for d in self.detector._by_edge.get(p.edge, ()):
                if d.appeared <= p.t_in:  # after a repair too: those passes should flag it likely_repaired
                    self.truth.defect_passes.append((d.id, p.t_in, vi))
            for obs in self.detector.observe(p, errors):  # drawn for the blind too: the others' draws stay the same
                if vi < self.params.blind and obs.truth is not None:  # a smeared lens still boxes a stray shadow
                    continue
                self.seq[vi] += 1
                event = build_event(obs, device_id=device, seq=self.seq[vi], frame=self.frame, epoch=self.epoch)
                self.truth.detections[event["event_id"]] = obs.truth
                if obs.truth is not None:
                    self.truth.first_detected.setdefault(obs.truth, obs.t)
                msgs.append(Message(obs.t + 1.0, "event", event["event_id"], event))  # the track ends a bit later
            edge = self.net.edges[p.edge]
            next_point = max(next_point, p.t_in)  # waiting at a junction adds no points (the agent's MIN_STEP_M)
            while next_point <= p.t_out:
                f = (next_point - p.t_in) / max(p.t_out - p.t_in, 1e-6)
                s = f * edge.length if p.forward else (1 - f) * edge.length
                x, y = edge.point(min(max(s, 0.0), edge.length), -LANE_OFFSET_M if p.forward else LANE_OFFSET_M)
                ge, gn = errors.at(next_point)
                points.append((next_point, x + ge, y + gn))
                if points[-1][0] - points[0][0] >= cal.COVERAGE_RECORD_S:
                    msgs.append(self._coverage(device, points))
                    points = [points[-1]]  # the next record starts where this one ended
                next_point += cal.COVERAGE_POINT_S
        if len(points) >= 2:
            msgs.append(self._coverage(device, points))
        msgs.sort(key=lambda m: m.t)
        return msgs

    def _coverage(self, device: str, points: list[tuple[float, float, float]]) -> Message:
        cov = build_coverage(device, points, self.frame, self.epoch, footprint=self.footprint)
        return Message(points[-1][0], "coverage", cov["coverage_id"], cov)
