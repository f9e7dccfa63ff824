"""Camera intrinsics and mounting (owned by the calibration package)."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import Section


class CalibrationConfig(Section):
    height_m: float = Field(1.4, gt=0, le=5, description="Camera height above the road, metres")
    pitch_deg: float = Field(10.0, ge=-10, le=60, description="Downward tilt of the optical axis, degrees")
