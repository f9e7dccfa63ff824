"""Detector settings (owned by the detector modules)."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import Section


class DetectorConfig(Section):
    model: str = Field("bundled", description="Path of the .onnx model, or 'bundled' for the shipped one")
    score_threshold: float = Field(0.35, ge=0, le=1, description="Minimum detection score kept")
