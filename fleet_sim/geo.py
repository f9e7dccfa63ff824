"""Geometry in the simulator's local east/north metres (roadmon_contract.geodesy.LocalFrame converts to WGS84)."""

from __future__ import annotations

import math


def point_segment_m(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> float:
    """Distance from P to the segment A-B (metres in one local frame)."""
    dx, dy = bx - ax, by - ay
    n2 = dx * dx + dy * dy
    t = 0.0 if n2 == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / n2))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))
