"""Tracker and event settings (owned by the tracker / event modules)."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import Section


class TrackerConfig(Section):
    min_frames: int = Field(3, ge=1, description="Frames a track needs before it may become an event")
