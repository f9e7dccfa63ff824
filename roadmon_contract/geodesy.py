"""The one Earth model of the project: WGS84, and a local tangent plane (east/north metres) around an anchor.

The agent's position filter, the geolocator, the simulator, the server's aggregation grid, the demo and the
benches all convert with this module, so a metre means the same everywhere. Over the few kilometres a
vehicle's filter or a street's defects span, the tangent plane's scale error stays under 0.1 %, and it
agrees with PostGIS geography distances (also WGS84) to millimetres over tens of metres.

Functions take floats or numpy arrays alike (the simulator converts whole routes at once).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np

WGS84_A = 6_378_137.0          # semi-major axis, metres
WGS84_E2 = 6.69437999014e-3    # first eccentricity squared
_RAD = math.pi / 180.0

Num = TypeVar("Num", float, np.ndarray)


def radii_m(lat_deg: float) -> tuple[float, float]:
    """(meridian radius M, prime-vertical radius N) of curvature at a latitude, metres."""
    s = math.sin(lat_deg * _RAD)
    w = math.sqrt(1.0 - WGS84_E2 * s * s)
    return WGS84_A * (1.0 - WGS84_E2) / w**3, WGS84_A / w


def metres_per_degree(lat_deg: float) -> tuple[float, float]:
    """(metres per degree of latitude, per degree of longitude) at a latitude."""
    m, n = radii_m(lat_deg)
    return m * _RAD, max(n * math.cos(lat_deg * _RAD), 1.0) * _RAD


class LocalFrame:
    """East/north metres around (lat0, lon0) on the tangent plane; exact round trip."""

    def __init__(self, lat0: float, lon0: float) -> None:
        self.lat0, self.lon0 = float(lat0), float(lon0)
        self.m_per_deg_n, self.m_per_deg_e = metres_per_degree(self.lat0)

    def to_enu(self, lat: Num, lon: Num) -> tuple[Num, Num]:
        dlon = (lon - self.lon0 + 180.0) % 360.0 - 180.0  # across the antimeridian the short way
        return dlon * self.m_per_deg_e, (lat - self.lat0) * self.m_per_deg_n

    def to_geodetic(self, east: Num, north: Num) -> tuple[Num, Num]:
        lat = self.lat0 + north / self.m_per_deg_n
        lon = (self.lon0 + east / self.m_per_deg_e + 180.0) % 360.0 - 180.0
        if isinstance(lat, np.ndarray):
            return np.clip(lat, -90.0, 90.0), lon
        return max(-90.0, min(90.0, lat)), lon


def offset_latlon(lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    """The point EAST_M, NORTH_M metres from (lat, lon)."""
    return LocalFrame(lat, lon).to_geodetic(east_m, north_m)


def enu_offset(lat0: float, lon0: float, lat: float, lon: float) -> tuple[float, float]:
    """(east, north) metres of (lat, lon) from (lat0, lon0); the inverse of offset_latlon."""
    return LocalFrame(lat0, lon0).to_enu(lat, lon)


def compass_deg(degrees: float) -> float:
    """An angle as a compass bearing in [0, 360): Python's % gives 360.0 for a tiny negative angle (-1e-15 % 360
    rounds up), which the contract's headings exclude."""
    wrapped = float(degrees) % 360.0
    return 0.0 if wrapped >= 360.0 else wrapped


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Ground distance in metres between two nearby points (a street, not a continent)."""
    return math.hypot(*enu_offset(lat1, lon1, lat2, lon2))


def distances_m(lat0: float, lon0: float, lat: Any, lon: Any) -> np.ndarray:
    """Distances in metres from (lat0, lon0) to every point of the arrays LAT, LON."""
    east, north = LocalFrame(lat0, lon0).to_enu(np.asarray(lat, float), np.asarray(lon, float))
    return np.hypot(east, north)
