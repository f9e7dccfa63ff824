"""How good could the map be with this detector and this receiver? Two bounds of issue 15's goals, from the fleet
simulator's truth alone (no server: every sighting's true defect is known).

1. Position: a defect's position as the mean of its sightings (what the server does), against a least-squares
   fit that also estimates each vehicle's slowly wandering GNSS offset from the other defects it saw shortly
   before or after (a Gauss-Markov offset per vehicle with the drift model's time constant): landmark alignment
   of passes, with perfect association. Median error by number of sightings.
2. Repairs: how soon a rule on misses could flag a repaired pothole `likely_repaired` (by the time 3 passes by
   2 vehicles went by), and how often it flags one still there, at several strictness levels, for three rules:
   - `oracle`: knows each pass's true chance of finding the pothole (the best any rule can do);
   - `lateral`: each way's chance from how far the pothole lies beside the path of the vehicles that saw it going
     that way (the simulator's recall-by-offset curve), blended with the pothole's own record;
   - `learned`: the same with the curve learned from the run's own passes (up to each pothole's last sighting),
     as a server could learn it from its fleet;
   - `per-way`: the server's rule (migration 016): the pothole's own record per way, one unseen miss assumed.

Usage: python -m bench.bench_map_bounds [--seeds 1,2] [--days 8] [--vehicles 60] [--quick]
Exit code 0 (the figures are bounds to read, not targets).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from rich.console import Console
from rich.table import Table

from bench.common import description
from edge_agent.lab.sim.gnss_noise import CORRELATED_SHARE, CORRELATION_S
from fleet_server.repair_odds import Curve, found_share, offset_bin
from fleet_sim import calibration as cal
from fleet_sim.detection import DetectionModel, Observation, p_detect
from fleet_sim.gnss import SMOOTH_S, ErrorTrack
from fleet_sim.network import LANE_OFFSET_M
from fleet_sim.vehicles import EdgePass
from fleet_sim.world import World, WorldParams

CHANCES = (0.03, 0.01, 0.003, 0.001)
RULES = ("oracle", "lateral", "learned", "per-way")
LATERAL_WEIGHT = 4.0  # the `lateral` and `learned` rules' prior counts as this many passes
BIN_M = 0.5           # `learned`: the curve's bins of offset beside the path
MIN_BIN_PASSES = 30   # `learned`: fewer passes in a bin and the rule falls back to per-way


@dataclass
class PotholePass:
    t: float
    vehicle: int
    forward: bool
    chance: float    # the true chance that this pass finds it
    found: bool
    offset: float    # how far the pothole lies beside this vehicle's path, metres


class RecordingModel(DetectionModel):
    """The calibrated model, unchanged, that also writes down every pothole pass and every sighting."""

    def __init__(self, base: DetectionModel) -> None:
        super().__init__(base.net, base.field, base.rng, base.params)
        self.passes: dict[int, list[PotholePass]] = defaultdict(list)
        self.sightings: list[tuple[int, Observation]] = []

    def observe(self, p: EdgePass, errors: ErrorTrack) -> list[Observation]:
        out = super().observe(p, errors)
        found = {o.truth for o in out}
        sign = 1.0 if p.forward else -1.0
        for d in self._by_edge.get(p.edge, ()):
            t, _ = self._travel(p, d.s)
            if d.cls == "pothole" and d.appeared <= t:
                offset = abs(sign * d.left + LANE_OFFSET_M)
                chance = p_detect("pothole", offset, self.params)
                self.passes[d.id].append(PotholePass(t, p.vehicle, p.forward, chance, d.id in found, offset))
        self.sightings += [(p.vehicle, o) for o in out]
        return out


def simulate(seed: int, days: int, vehicles: int) -> tuple[World, RecordingModel]:
    world = World(WorldParams(seed=seed, vehicles=vehicles, grid=(24, 24)), datetime(2026, 11, 1, tzinfo=UTC))
    world.detector = RecordingModel(world.detector)
    for day in range(days):
        world.day(day)
    return world, world.detector


# ------------------------------------------------------------------------------------------------ position


def aligned_positions(sightings: list[tuple[int, Observation]], axis: str) -> dict[int, float]:
    """Per true defect, its position on AXIS ('east'/'north') fitted jointly with a Gauss-Markov offset per
    vehicle (prior: the drift model's wandering part; the rest, averaged over SMOOTH_S, and the camera's error
    as the sighting's own noise)."""
    params = cal.DetectionParams()
    axis_sigma = params.gnss_sigma_m / math.sqrt(2)
    sig_c = axis_sigma * math.sqrt(CORRELATED_SHARE)
    sig_m = math.hypot(axis_sigma * math.sqrt(1 - CORRELATED_SHARE) / math.sqrt(SMOOTH_S), params.camera_sigma_m)
    defects = sorted({o.truth for _, o in sightings})
    col = {d: i for i, d in enumerate(defects)}
    n_d, n = len(defects), len(sightings)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    rhs: list[float] = []

    def equation(terms: list[tuple[int, float]], value: float) -> None:
        r = len(rhs)
        for c, v in terms:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        rhs.append(value)

    for i, (_, o) in enumerate(sightings):  # sighting = defect + the vehicle's offset then + noise
        equation([(col[o.truth], 1 / sig_m), (n_d + i, 1 / sig_m)], getattr(o, axis) / sig_m)
    order = sorted(range(n), key=lambda i: (sightings[i][0], sightings[i][1].t))
    prev = None
    for i in order:  # the offset wanders: each one from the same vehicle's previous one
        if prev is not None and sightings[prev][0] == sightings[i][0]:
            a = math.exp(-(sightings[i][1].t - sightings[prev][1].t) / CORRELATION_S)
            s = sig_c * math.sqrt(max(1 - a * a, 1e-9))
            equation([(n_d + i, 1 / s), (n_d + prev, -a / s)], 0.0)
        else:
            equation([(n_d + i, 1 / sig_c)], 0.0)
        prev = i
    a_mat = sp.csr_matrix((vals, (rows, cols)), shape=(len(rhs), n_d + n))
    x = spla.spsolve((a_mat.T @ a_mat).tocsc(), a_mat.T @ np.array(rhs))
    return {d: float(x[col[d]]) for d in defects}


def position_table(world: World, rec: RecordingModel) -> dict[int, tuple[list[float], list[float]]]:
    """Sightings per pothole (capped at 6) -> (errors of the mean, errors of the aligned fit), metres."""
    truth = {d.id: d for d in world.field.defects}
    sightings = [(v, o) for v, o in rec.sightings if o.truth is not None and truth[o.truth].cls == "pothole"]
    east, north = aligned_positions(sightings, "east"), aligned_positions(sightings, "north")
    by_defect: dict[int, list[Observation]] = defaultdict(list)
    for _, o in sightings:
        by_defect[o.truth].append(o)  # type: ignore[index]
    out: dict[int, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for d, obs in by_defect.items():
        cx, cy = truth[d].centre(world.net)
        mean = math.hypot(statistics.fmean(o.east for o in obs) - cx, statistics.fmean(o.north for o in obs) - cy)
        out[min(len(obs), 6)][0].append(mean)
        out[min(len(obs), 6)][1].append(math.hypot(east[d] - cx, north[d] - cy))
    return out


# ------------------------------------------------------------------------------------------------- repairs


def learned_curve(rec: RecordingModel) -> Curve:
    """How often a pass finds a pothole by its offset beside the path, learned as a server could: over every
    pothole's passes up to its last sighting (it was there), those going a way some earlier pass going it found
    it (the first finding of a way is what made the way known, so it does not count)."""
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for passes in rec.passes.values():
        ordered = sorted(passes, key=lambda p: p.t)
        last = max((i for i, p in enumerate(ordered) if p.found), default=-1)
        known: set[bool] = set()
        for p in ordered[:last + 1]:
            if p.forward in known:
                counts[offset_bin(p.offset, BIN_M)][0] += p.found
                counts[offset_bin(p.offset, BIN_M)][1] += 1
            if p.found:
                known.add(p.forward)
    return Curve({("pothole", b): (f, n) for b, (f, n) in counts.items()}, BIN_M, MIN_BIN_PASSES)


def miss_factor(rule: str, history: list[PotholePass], miss: PotholePass, curve: Curve | None = None) -> float:
    """The chance that MISS happens while the pothole is there, as RULE judges it from HISTORY (its passes up to
    its last sighting), with the server's own blend (repair_odds.found_share); 1.0: the miss proves nothing (no
    vehicle going its way has seen it)."""
    if rule == "oracle":
        return 1 - miss.chance
    way = [p for p in history if p.forward == miss.forward]
    found = sum(p.found for p in way)
    prior = {"lateral": miss.chance, "learned": curve.rate("pothole", miss.offset) if curve else None}.get(rule)
    return 1 - found_share(found, len(way) - found, prior, LATERAL_WEIGHT)


def judge(rule: str, chance: float, world: World, rec: RecordingModel) -> dict[str, float]:
    """Flag a pothole once the misses since its last sighting (>= 2, by >= 2 vehicles) are less likely than
    CHANCE for one still there; score as bench_fleet does."""
    truth = {d.id: d for d in world.field.defects}
    curve = learned_curve(rec) if rule == "learned" else None
    mapped = false = eligible = within = 0
    for did, passes in rec.passes.items():
        passes.sort(key=lambda p: p.t)
        d = truth[did]
        history: list[PotholePass] = []
        since: list[PotholePass] = []
        seen = flagged = false_flag = False
        flagged_at = None
        for p in passes:
            if p.found:
                history += [*since, p]
                since, seen, flagged = [], True, False
                continue
            if not seen:
                continue
            since.append(p)
            factors = [miss_factor(rule, history, m, curve) for m in since]
            counted = [m for m, f in zip(since, factors, strict=True) if f < 1.0]
            if not flagged and math.prod(factors) <= chance and len(counted) >= 2 \
                    and len({m.vehicle for m in counted}) >= 2:
                flagged = True
                if d.exists(p.t):
                    false_flag = True
                elif flagged_at is None:
                    flagged_at = p.t
        mapped += seen
        false += false_flag
        if d.repaired is None or not any(p.found and p.t < d.repaired for p in passes):
            continue
        after = [p for p in passes if p.t >= d.repaired]
        due = next((p.t for i, p in enumerate(after) if i >= 2 and len({q.vehicle for q in after[:i + 1]}) >= 2),
                   None)
        if due is not None:
            eligible += 1
            within += flagged_at is not None and flagged_at <= due
    return {"false": false / max(mapped, 1), "within": within / max(eligible, 1), "eligible": eligible,
            "mapped": mapped}


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--vehicles", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="one seed, 4 days")
    args = parser.parse_args()
    seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
    days = 4 if args.quick else args.days
    console = Console()
    for seed in seeds:
        world, rec = simulate(seed, days, args.vehicles)
        pos = Table(title=f"Pothole position error, seed {seed}: mean of sightings vs passes aligned on landmarks")
        for col in ("sightings", "potholes", "median: mean", "median: aligned", "ratio"):
            pos.add_column(col, justify="right")
        for n, (mean, aligned) in sorted(position_table(world, rec).items()):
            m, a = statistics.median(mean), statistics.median(aligned)
            pos.add_row(f"{n}+" if n == 6 else str(n), str(len(mean)), f"{m:.2f} m", f"{a:.2f} m", f"{a / m:.2f}")
        console.print(pos)
        rep = Table(title=f"Repaired potholes flagged within 3 passes by 2 vehicles / sound ones flagged, seed {seed}")
        rep.add_column("chance")
        for rule in RULES:
            rep.add_column(rule, justify="right")
        for chance in CHANCES:
            cells = []
            for rule in RULES:
                r = judge(rule, chance, world, rec)
                cells.append(f"{r['within']:.2f} / {r['false']:.3f}")
            rep.add_row(str(chance), *cells)
        console.print(rep)
        console.print(f"({r['eligible']} repaired potholes with 3 passes by 2 vehicles after the repair, "
                      f"{r['mapped']} potholes found at least once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
