"""Camera capture settings (owned by the capture module)."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import Section


class CameraConfig(Section):
    source: str = Field("0", description="V4L2 index or path, RTSP/HTTP URL, GStreamer pipeline, or video file")
