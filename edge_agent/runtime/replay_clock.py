"""Time of a recorded frame: frame k of a recording was captured at start_utc + k / fps.

The start comes from an explicit --video-start (a technician correcting a wrong one wins), else from
drive.json beside the video (the simulator and the recorder write it), else from the first NMEA epoch's UTC.
Recorded GNSS fixes run on a virtual monotonic clock (seconds of UTC since 2000-01-01,
edge_agent.gnss.epochs.virtual_mono), so a frame's time on that same clock says which fixes the position
filter may have seen when the frame was taken.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge_agent.gnss.epochs import virtual_mono

log = logging.getLogger(__name__)

SIDECAR = "drive.json"


class ClockError(ValueError):
    """A recording whose frame times cannot be worked out."""


@dataclass(frozen=True)
class ReplayClock:
    start_utc: datetime
    fps: float
    source: str          # where start_utc came from: 'drive.json', 'option' or 'nmea'

    def frame_utc(self, index: int) -> datetime:
        return self.start_utc + timedelta(seconds=index / self.fps)

    def frame_mono(self, index: int) -> float:
        return virtual_mono(self.frame_utc(index))


def parse_utc(text: str) -> datetime:
    """An ISO 8601 time; a time without a zone is taken as UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ClockError(f"not an ISO 8601 time: {text!r}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def read_sidecar(video: Path) -> dict[str, Any] | None:
    """drive.json beside VIDEO, or None when there is none; ClockError when it is unreadable."""
    path = video.with_name(SIDECAR)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ClockError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ClockError(f"{path}: expected a JSON object")
    return data


def clock_for(video: Path, file_fps: float | None, video_start: str | None = None,
              first_fix_utc: datetime | None = None) -> ReplayClock:
    """The clock of VIDEO's frames (see the module doc for the order of sources)."""
    sidecar = read_sidecar(video) or {}
    fps = sidecar.get("fps") or file_fps
    if not fps or float(fps) <= 0:
        raise ClockError(f"{video}: frame rate unknown (no fps in {SIDECAR}, none in the file)")
    if video_start:
        return ReplayClock(parse_utc(video_start), float(fps), "option")
    if sidecar.get("start_utc"):
        return ReplayClock(parse_utc(str(sidecar["start_utc"])), float(fps), SIDECAR)
    if first_fix_utc is not None:
        log.warning("%s: no %s and no --video-start; assuming the video starts at the first NMEA epoch, %s",
                    video, SIDECAR, first_fix_utc.isoformat())
        return ReplayClock(first_fix_utc.astimezone(UTC), float(fps), "nmea")
    raise ClockError(f"{video}: no {SIDECAR} beside it, no --video-start and no dated NMEA epoch to start from")
