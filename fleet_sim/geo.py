"""Local east/north metres <-> WGS84 around one origin (flat earth: centimetres over a city's few km)."""

from __future__ import annotations

import math
from dataclasses import dataclass

M_PER_DEG_LAT = 111_320.0


@dataclass(frozen=True)
class Frame:
    lat0: float
    lon0: float

    @property
    def m_per_deg_lon(self) -> float:
        return M_PER_DEG_LAT * math.cos(math.radians(self.lat0))

    def to_latlon(self, east: float, north: float) -> tuple[float, float]:
        return self.lat0 + north / M_PER_DEG_LAT, self.lon0 + east / self.m_per_deg_lon

    def to_en(self, lat: float, lon: float) -> tuple[float, float]:
        return (lon - self.lon0) * self.m_per_deg_lon, (lat - self.lat0) * M_PER_DEG_LAT


def point_segment_m(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> float:
    """Distance from P to the segment A-B (metres in one local frame)."""
    dx, dy = bx - ax, by - ay
    n2 = dx * dx + dy * dy
    t = 0.0 if n2 == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / n2))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))
