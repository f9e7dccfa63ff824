"""Camera capture settings (owned by the capture module)."""

from __future__ import annotations

from pydantic import Field

from roadmon_contract.config_base import Section


def source_kind(source: str) -> str:
    """'device' (V4L2 index or /dev path), 'url' (RTSP/HTTP), 'gstreamer' (a pipeline) or 'file'."""
    text = source.strip()
    if text.isdigit() or text.startswith("/dev/"):
        return "device"
    if "://" in text:
        return "url"
    if "!" in text:
        return "gstreamer"
    return "file"


class CameraConfig(Section):
    source: str = Field("0", description="V4L2 index or path, RTSP/HTTP URL, GStreamer pipeline, or video file "
                                         "(a relative video file is taken beside the config file)")
    width: int | None = Field(None, gt=0, description="Requested frame width in pixels (None: the source's own)")
    height: int | None = Field(None, gt=0, description="Requested frame height in pixels (None: the source's own)")
    fps: float | None = Field(None, gt=0, le=240, description="Requested frame rate (None: the source's own)")
    file_realtime: bool = Field(
        True, description="Video files: pace frames at the file's rate (true) or read them as fast as possible")
    no_frame_after_s: float = Field(
        3.0, gt=0, le=600, description="Seconds without a frame before the camera counts as 'no_frames' on health, "
                                   "and of one repeated picture while driving ('frozen') or a black one ('blank')")
    reopen_initial_s: float = Field(0.5, gt=0, le=60, description="First wait before reopening a lost camera, s")
    reopen_max_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between reopen attempts, s")
