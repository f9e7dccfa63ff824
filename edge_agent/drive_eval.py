"""How well a replay found the defects of a simulated drive: events matched to true defects.

One-to-one matching within a radius (Hungarian on distance), so a second event for the same defect is a false
positive. Precision = matched events / events; recall = matched defects / defects; the geolocation error is
the distance of each matched pair.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from edge_agent.geolocate import distance_m


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


def score(events: list[dict[str, Any]], defects: list[tuple[float, float]], radius_m: float = 5.0) -> Score:
    """Match EVENTS (wire-format dicts) to DEFECTS (lat, lon) one to one within RADIUS_M."""
    pairs: list[float] = []
    if events and defects:
        dist = np.array([[distance_m(e["position"]["lat"], e["position"]["lon"], lat, lon) for lat, lon in defects]
                         for e in events])
        cost = np.where(dist <= radius_m, dist, 1e6)
        rows, cols = linear_sum_assignment(cost)
        pairs = [float(dist[r, c]) for r, c in zip(rows, cols, strict=True) if dist[r, c] <= radius_m]
    matched = len(pairs)
    ordered = sorted(pairs)
    return Score(events=len(events), defects=len(defects), matched=matched,
                 precision=matched / len(events) if events else 1.0,
                 recall=matched / len(defects) if defects else 1.0,
                 median_error_m=statistics.median(pairs) if pairs else None,
                 p90_error_m=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if ordered else None,
                 errors_m=tuple(pairs))
