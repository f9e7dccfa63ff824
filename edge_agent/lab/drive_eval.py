"""How well a replay found the defects of a simulated drive: events matched to true defects.

One-to-one matching within a radius (Hungarian on distance), so a second event for the same defect is a false
positive. Precision = matched events / events; recall = matched defects / defects; the geolocation error is
the distance of each matched pair. `score_by_class` does that per class (pothole, crack).

With the drive's true path (truth.csv) the error splits in two: the GNSS part (where the filter put the vehicle
at the event's best frame, against where it was) and the camera side's own part (`without_gnss_error`: each
event moved back by its vehicle's error, leaving projection, tracking and the combination of views). No
pipeline removes the first from one pass: a receiver's error wanders slowly (multipath, atmosphere) and is
nearly the same over the seconds a defect is in view.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from roadmon_contract.geodesy import distances_m, enu_offset, offset_latlon


@dataclass(frozen=True)
class Score:
    events: int
    defects: int
    matched: int
    precision: float
    recall: float
    median_error_m: float | None
    p90_error_m: float | None
    errors_m: tuple[float, ...]
    gnss_median_m: float | None = None      # the filtered vehicle position's error at the matched events

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["errors_m"] = [round(e, 2) for e in self.errors_m]
        return out


def true_defects(geojson: Path, classes: Iterable[str] = ("pothole",)) -> list[tuple[float, float]]:
    """(lat, lon) of the defects of CLASSES in a simulator's defects.geojson."""
    wanted = set(classes)
    doc = json.loads(geojson.read_text(encoding="utf-8"))
    out = []
    for feature in doc.get("features", []):
        props = feature.get("properties") or {}
        if props.get("class") in wanted and (feature.get("geometry") or {}).get("type") == "Point":
            lon, lat = feature["geometry"]["coordinates"][:2]
            out.append((float(lat), float(lon)))
    return out


class TruthTrack:
    """The simulator's true vehicle path (truth.csv: utc, lat, lon every 0.1 s), looked up by UTC."""

    def __init__(self, path: Path) -> None:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        self.utc = [r["utc"] for r in rows]
        self.lat = np.array([float(r["lat"]) for r in rows])
        self.lon = np.array([float(r["lon"]) for r in rows])
        self.t = np.array([float(r["t"]) for r in rows])  # seconds of video time
        self._t0 = self._seconds(self.utc[0]) - self.t[0]

    @staticmethod
    def _seconds(iso: str) -> float:
        from datetime import datetime

        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

    def at(self, iso_utc: str) -> tuple[float, float]:
        t = self._seconds(iso_utc) - self._t0
        return float(np.interp(t, self.t, self.lat)), float(np.interp(t, self.t, self.lon))


def vehicle_error(event: dict[str, Any], truth: TruthTrack) -> tuple[float, float]:
    """(east, north) metres from where the vehicle was at the event's best frame to where the filter put it."""
    true_lat, true_lon = truth.at(event["captured_at"])
    return enu_offset(true_lat, true_lon, event["vehicle"]["lat"], event["vehicle"]["lon"])


def without_gnss_error(events: list[dict[str, Any]], truth: TruthTrack) -> list[dict[str, Any]]:
    """EVENTS with each position moved back by its vehicle's GNSS error: what the camera side alone did."""
    out = []
    for event in events:
        east, north = vehicle_error(event, truth)
        lat, lon = offset_latlon(event["position"]["lat"], event["position"]["lon"], -east, -north)
        out.append({**event, "position": {**event["position"], "lat": lat, "lon": lon}})
    return out


def score_by_class(events: list[dict[str, Any]], geojson: Path, classes: Iterable[str] = ("pothole", "crack"),
                   radius_m: float = 5.0, truth: TruthTrack | None = None) -> dict[str, Score]:
    """`score` per class: each class's events against that class's true defects (a crack event on a pothole is
    a false positive of `crack` and leaves the pothole missed)."""
    return {cls: score([e for e in events if e.get("class") == cls], true_defects(geojson, (cls,)), radius_m, truth)
            for cls in classes}


def crack_truth(geojson: Path) -> list[dict[str, Any]]:
    """The simulator's cracks: (lat, lon), length_m, width_m and orientation_deg (their long axis)."""
    doc = json.loads(geojson.read_text(encoding="utf-8"))
    out = []
    for feature in doc.get("features", []):
        props = feature.get("properties") or {}
        if props.get("class") == "crack" and "line" in props:
            lon, lat = feature["geometry"]["coordinates"][:2]
            out.append({"lat": float(lat), "lon": float(lon), "length_m": float(props["length_m"]),
                        "width_m": float(props["width_m"]), "orientation_deg": float(props["orientation_deg"])})
    return out


def match(found: Sequence[tuple[float, float]], true: Sequence[tuple[float, float]],
          radius_m: float) -> list[tuple[int, int, float]]:
    """One-to-one pairs (found index, true index, metres) within RADIUS_M that minimise the summed distance
    (the Hungarian method: a greedy nearest-first match can pair a defect with its neighbour's report and
    leave both others unmatched). The demo, the benches and the tests all score placements with this."""
    if not found or not true:
        return []
    true_lat, true_lon = np.array(true, float).T
    dist = np.array([distances_m(f[0], f[1], true_lat, true_lon) for f in found])
    rows, cols = linear_sum_assignment(np.where(dist <= radius_m, dist, 1e6))
    return [(int(r), int(c), float(dist[r, c])) for r, c in zip(rows, cols, strict=True) if dist[r, c] <= radius_m]


def score(events: list[dict[str, Any]], defects: list[tuple[float, float]], radius_m: float = 5.0,
          truth: TruthTrack | None = None) -> Score:
    """Match EVENTS (wire-format dicts) to DEFECTS (lat, lon) one to one within RADIUS_M."""
    keep = match([(e["position"]["lat"], e["position"]["lon"]) for e in events], defects, radius_m)
    pairs = [d for _, _, d in keep]
    gnss = [float(np.hypot(*vehicle_error(events[r], truth))) for r, _, _ in keep] if truth is not None else []
    matched = len(pairs)
    ordered = sorted(pairs)
    return Score(events=len(events), defects=len(defects), matched=matched,
                 precision=matched / len(events) if events else 1.0,
                 recall=matched / len(defects) if defects else 1.0,
                 median_error_m=statistics.median(pairs) if pairs else None,
                 p90_error_m=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else None,
                 errors_m=tuple(pairs),
                 gnss_median_m=statistics.median(gnss) if gnss else None)
