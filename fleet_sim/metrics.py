"""Map quality: the server's defects (snapshots over simulated time) scored against the truth.

Matching: a map defect belongs to the nearest true defect of its class that had appeared by then, within
MATCH_RADIUS_M of the true pothole's centre or of the true crack's line (a crack's map position may lie anywhere
along it). Per true defect, "after k passes" is the first snapshot after the k-th time a vehicle drove its street
while it existed (either direction: the opposite lane is a pass too, as it is for the server's coverage).

- recall_k: share of true defects with at least one map defect on the map (new, confirmed or scheduled);
- duplicates_k: share of found defects with two or more map defects (one pothole, two pins);
- error_k: distance from the nearest of its map defects (median, p95);
- precision_k: per street, after the street's k-th pass: map defects on it that match a defect existing then,
  over all map defects on it (those matching a defect repaired since are left out: they are the repair
  measures' business), for the whole map and for confirmed defects only;
- confirmation: simulated hours from a defect's first detection to its map defect being confirmed;
- repairs: per repaired defect that was on the map, passes and days after the repair until its map defect is
  `likely_repaired`, and whether it was by the time 3 passes by 2 vehicles had gone by; false likely_repaired:
  defects flagged while they still existed, over all defects that were on the map.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

MATCH_RADIUS_M = 5.0
SHOWN = ("new", "confirmed", "scheduled")
CONFIRMED = ("confirmed", "scheduled")
SETTLE_S = 120.0    # a pass's events and coverage are written within this long after it


@dataclass(frozen=True)
class TruthDefect:
    id: int
    cls: str
    ax: float           # ends of its line (a pothole's are its centre twice), local metres
    ay: float
    bx: float
    by: float
    appeared: float
    repaired: float | None = None

    @property
    def length(self) -> float:
        return math.hypot(self.bx - self.ax, self.by - self.ay)

    def exists(self, t: float) -> bool:
        return self.appeared <= t and (self.repaired is None or t < self.repaired)


@dataclass(frozen=True)
class MapDefect:
    id: int
    cls: str
    status: str
    x: float
    y: float
    line_m: float = 0.0     # length of its line, 0 for points


@dataclass
class Snapshot:
    t: float
    defects: list[MapDefect]


def segment_distances(px: np.ndarray, py: np.ndarray, truths: list[TruthDefect]) -> np.ndarray:
    """(points x truths) distances from each point to each true defect's line."""
    ax = np.array([d.ax for d in truths])[None, :]
    ay = np.array([d.ay for d in truths])[None, :]
    bx = np.array([d.bx for d in truths])[None, :]
    by = np.array([d.by for d in truths])[None, :]
    dx, dy = bx - ax, by - ay
    n2 = dx * dx + dy * dy
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(n2 > 0, ((px[:, None] - ax) * dx + (py[:, None] - ay) * dy) / n2, 0.0)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(px[:, None] - (ax + t * dx), py[:, None] - (ay + t * dy))


def match(defects: list[MapDefect], truths: list[TruthDefect], t: float,
          radius: float = MATCH_RADIUS_M) -> dict[int, tuple[int, float] | None]:
    """Map defect id -> (true defect id, distance) of the nearest same-class true defect appeared by T, or None."""
    out: dict[int, tuple[int, float] | None] = {d.id: None for d in defects}
    for cls in {d.cls for d in defects}:
        mine = [d for d in defects if d.cls == cls]
        cands = [x for x in truths if x.cls == cls and x.appeared <= t]
        if not cands:
            continue
        dist = segment_distances(np.array([d.x for d in mine]), np.array([d.y for d in mine]), cands)
        best = dist.argmin(axis=1)
        for i, d in enumerate(mine):
            if dist[i, best[i]] <= radius:
                out[d.id] = (cands[best[i]].id, float(dist[i, best[i]]))
    return out


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class KRow:
    k: int
    defects: int = 0
    found: int = 0
    found_confirmed: int = 0
    duplicated: int = 0
    errors: list[float] = field(default_factory=list)
    tp: int = 0
    fp: int = 0
    tp_confirmed: int = 0
    fp_confirmed: int = 0

    def as_dict(self) -> dict:
        return {
            "k": self.k, "defects": self.defects,
            "recall": self.found / self.defects if self.defects else None,
            "recall_confirmed": self.found_confirmed / self.defects if self.defects else None,
            "duplicates": self.duplicated / self.found if self.found else None,
            "median_error_m": _pct(self.errors, 50), "p95_error_m": _pct(self.errors, 95),
            "precision": self.tp / (self.tp + self.fp) if self.tp + self.fp else None,
            "precision_confirmed": (self.tp_confirmed / (self.tp_confirmed + self.fp_confirmed)
                                    if self.tp_confirmed + self.fp_confirmed else None),
        }


class Scorer:
    """Scores SNAPSHOTS (in time order) against TRUTHS, given who passed what when."""

    def __init__(self, truths: list[TruthDefect], snapshots: list[Snapshot],
                 defect_passes: list[tuple[int, float, int]],
                 street_passes: list[tuple[int, float]] | None = None,
                 map_street: dict[int, int] | None = None) -> None:
        """DEFECT_PASSES: (true defect id, time, vehicle) of every drive along its street, whether or not it
        existed then; STREET_PASSES (street, time) and MAP_STREET (map defect id -> street) for precision."""
        self.truths = {d.id: d for d in truths}
        self.snapshots = snapshots
        self.times = [s.t for s in snapshots]
        self.passes: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for did, t, v in sorted(defect_passes, key=lambda p: p[1]):
            self.passes[did].append((t, v))
        self.street_passes: dict[int, list[float]] = defaultdict(list)
        for street, t in sorted(street_passes or [], key=lambda p: p[1]):
            self.street_passes[street].append(t)
        self.map_street = map_street or {}
        self._matches: dict[int, dict[int, tuple[int, float] | None]] = {}

    def after(self, t: float) -> int | None:
        """Index of the first snapshot that includes what a pass at T sent."""
        i = bisect.bisect_left(self.times, t + SETTLE_S)
        return i if i < len(self.snapshots) else None

    def matches(self, i: int) -> dict[int, tuple[int, float] | None]:
        if i not in self._matches:
            s = self.snapshots[i]
            self._matches[i] = match(s.defects, list(self.truths.values()), s.t)
        return self._matches[i]

    def of_truth(self, i: int, truth_id: int, statuses: tuple[str, ...] = SHOWN) -> list[tuple[MapDefect, float]]:
        m = self.matches(i)
        return [(d, m[d.id][1]) for d in self.snapshots[i].defects
                if d.status in statuses and m[d.id] is not None and m[d.id][0] == truth_id]

    def k_passes(self, ks: range = range(1, 6)) -> list[dict]:
        rows = {k: KRow(k) for k in ks}
        for did, d in self.truths.items():
            living = [t for t, _ in self.passes.get(did, []) if d.exists(t)]
            for k in ks:
                if len(living) < k:
                    break
                i = self.after(living[k - 1])
                if i is None or not d.exists(self.times[i]):
                    continue
                row = rows[k]
                row.defects += 1
                mine = self.of_truth(i, did)
                if mine:
                    row.found += 1
                    row.duplicated += len(mine) >= 2
                    row.errors.append(min(dist for _, dist in mine))
                    row.found_confirmed += any(m.status in CONFIRMED for m, _ in mine)
        for street, times in self.street_passes.items():
            for k in ks:
                if len(times) < k:
                    break
                i = self.after(times[k - 1])
                if i is None:
                    continue
                m, t = self.matches(i), self.times[i]
                for md in self.snapshots[i].defects:
                    if md.status not in SHOWN or self.map_street.get(md.id) != street:
                        continue
                    hit = m[md.id]
                    if hit is not None and not self.truths[hit[0]].exists(t):
                        continue  # a repaired defect not yet flagged: counted by the repair measures
                    ok = hit is not None
                    rows[k].tp += ok
                    rows[k].fp += not ok
                    if md.status in CONFIRMED:
                        rows[k].tp_confirmed += ok
                        rows[k].fp_confirmed += not ok
        return [rows[k].as_dict() for k in ks]

    def confirmation(self, first_detected: dict[int, float]) -> dict:
        hours, passes = [], []
        for did, t0 in first_detected.items():
            start = self.after(t0)
            if start is None:
                continue
            for i in range(start, len(self.snapshots)):
                if self.of_truth(i, did, CONFIRMED):
                    hours.append((self.times[i] - t0) / 3600.0)
                    # Passes are timed when the vehicle enters the street: the first is the last one before T0.
                    mine = [t for t, _ in self.passes.get(did, []) if t <= self.times[i]]
                    first = max((j for j, t in enumerate(mine) if t <= t0), default=0)
                    passes.append(len(mine) - first)
                    break
        return {"confirmed": len(hours), "detected": len(first_detected), "median_h": _pct(hours, 50),
                "p95_h": _pct(hours, 95), "median_passes": _pct(passes, 50)}

    def repairs(self) -> dict:
        flagged_passes, flagged_days, within, eligible, repaired_mapped = [], [], 0, 0, 0
        mapped: set[int] = set()
        false_flags: set[int] = set()
        false_map_ids: set[int] = set()  # the server's defect ids, to read their histories
        for i, s in enumerate(self.snapshots):
            m = self.matches(i)
            for d in s.defects:
                hit = m[d.id]
                if hit is None:
                    continue
                truth = self.truths[hit[0]]
                if not truth.exists(s.t):
                    continue
                if d.status in SHOWN:
                    mapped.add(truth.id)
                elif d.status == "likely_repaired" and not self.of_truth(i, truth.id):
                    false_flags.add(truth.id)
                    false_map_ids.add(d.id)
        for did, d in self.truths.items():
            if d.repaired is None:
                continue
            before = bisect.bisect_left(self.times, d.repaired) - 1
            if before < 0 or not self.of_truth(before, did):
                continue  # not on the map when it was repaired
            repaired_mapped += 1
            after = [(t, v) for t, v in self.passes.get(did, []) if t >= d.repaired]
            t32 = None
            for n in range(len(after)):
                if n + 1 >= 3 and len({v for _, v in after[: n + 1]}) >= 2:
                    t32 = after[n][0]
                    break
            flag_i = None
            for i in range(before + 1, len(self.snapshots)):
                if not self.of_truth(i, did) and self.of_truth(i, did, ("likely_repaired",)):
                    flag_i = i
                    break
            if flag_i is not None:
                flagged_passes.append(sum(1 for t, _ in after if t + SETTLE_S <= self.times[flag_i]))
                flagged_days.append((self.times[flag_i] - d.repaired) / 86400.0)
            if t32 is not None:
                i32 = self.after(t32)
                if i32 is not None:
                    eligible += 1
                    within += flag_i is not None and flag_i <= i32
        return {"repaired_on_map": repaired_mapped, "flagged": len(flagged_passes),
                "median_passes": _pct(flagged_passes, 50), "median_days": _pct(flagged_days, 50),
                "p95_days": _pct(flagged_days, 95),
                "eligible_3_passes_2_vehicles": eligible, "flagged_within": within / eligible if eligible else None,
                "mapped": len(mapped), "false_likely_repaired": len(false_flags),
                "false_rate": len(false_flags) / len(mapped) if mapped else None,
                "false_likely_repaired_ids": sorted(false_map_ids)}

    def long_cracks(self, min_length_m: float = 6.0) -> dict:
        """At the last snapshot: map crack defects per long true crack (1 is right; a row of points is not)."""
        if not self.snapshots:
            return {}
        i, t = len(self.snapshots) - 1, self.times[-1]
        counts, ratios = [], []
        for did, d in self.truths.items():
            if d.cls != "crack" or d.length < min_length_m or not d.exists(t) or not self.passes.get(did):
                continue
            mine = self.of_truth(i, did)
            counts.append(len(mine))
            if len(mine) == 1 and mine[0][0].line_m > 0:
                ratios.append(mine[0][0].line_m / d.length)
        return {"long_cracks": len(counts), "one_defect": sum(c == 1 for c in counts),
                "several": sum(c > 1 for c in counts), "missing": sum(c == 0 for c in counts),
                "median_line_over_true": _pct(ratios, 50)}
