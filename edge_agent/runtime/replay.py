"""`edge-agent replay`: the live pipeline on a recorded drive (video + NMEA).

Frame k's time is start_utc + k / fps (edge_agent.runtime.replay_clock); before the pipeline sees frame k, the
position filter gets every recorded fix up to that time, as a live GNSS reader would have delivered them.
Frames come from the same FrameSource as a camera: as fast as the pipeline takes them (every frame,
repeatable) or, with realtime, at the file's rate, dropping what the pipeline cannot keep up with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2

from edge_agent.camera.capture import FrameSource
from edge_agent.config.camera import CameraConfig
from edge_agent.runtime.assemble import Agent
from edge_agent.runtime.replay_clock import SIDECAR, ClockError, ReplayClock, clock_for

log = logging.getLogger(__name__)


class ReplayError(ValueError):
    """A recording that cannot be replayed (missing, unreadable, no time)."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float | None
    frames: int | None
    width: int
    height: int


def probe_video(path: Path) -> VideoInfo:
    if not path.is_file():
        raise ReplayError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise ReplayError(f"{path}: not a video OpenCV can read")
        fps = cap.get(cv2.CAP_PROP_FPS)
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return VideoInfo(fps=fps if fps > 0 else None, frames=frames if frames > 0 else None,
                         width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()


class FixFeed:
    """Recorded fixes handed to the position filter up to a given time on the virtual clock."""

    def __init__(self, fixes: Iterator[Any], position_filter: Any) -> None:
        self._fixes = fixes
        self._filter = position_filter
        self._next: Any = next(self._fixes, None)
        self.fed = 0
        self.first_utc: datetime | None = None   # the recording's time range, of the fixes read so far
        self.last_utc: datetime | None = None
        self._note(self._next)

    @property
    def first(self) -> Any:
        return self._next

    def until(self, t_mono: float) -> None:
        while self._next is not None and self._next.t_mono <= t_mono:
            self._filter.update(self._next)
            self.fed += 1
            self._next = next(self._fixes, None)
            self._note(self._next)

    def read_rest(self) -> None:
        """Read the fixes after the video's end (not fed), so that last_utc is the recording's end."""
        for fix in self._fixes:
            self._note(fix)

    def _note(self, fix: Any) -> None:
        if fix is not None and fix.utc is not None:
            self.first_utc = self.first_utc or fix.utc
            self.last_utc = fix.utc


def overlap_warning(video_utc: tuple[datetime, datetime], feed: FixFeed, nmea: Path) -> str | None:
    """A warning when the NMEA's time range misses the video's: no frame then has a position, so no event
    does either (a recording of another drive or another day, or a wrong --video-start)."""
    if feed.first_utc is None or feed.last_utc is None:
        return None  # no dated fix at all: warned about at the start
    start, end = video_utc
    if feed.first_utc <= end and feed.last_utc >= start:
        return None
    return (f"the NMEA does not overlap the video's time: video {_iso(start)} .. {_iso(end)}, "
            f"NMEA {nmea.name} {_iso(feed.first_utc)} .. {_iso(feed.last_utc)}; no frame had a position "
            f"(another drive's recording, or a wrong --video-start or {SIDECAR})")


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def replay_drive(agent: Agent, video: Path, nmea: Path, *, realtime: bool = False, video_start: str | None = None,
                 progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """Run AGENT's pipeline (runtime.assemble.build_agent) over the recording; events and coverage go to its
    outbox. Returns the summary."""
    from edge_agent.gnss.source import fixes_from_file

    cfg, health, pipeline = agent.cfg, agent.health, agent.pipeline
    info = probe_video(video)
    if not nmea.is_file():
        raise ReplayError(f"{nmea}: no such NMEA file")
    feed = FixFeed(iter(fixes_from_file(nmea, cfg.gnss)), agent.position_filter)
    try:
        clock = clock_for(video, info.fps, video_start, feed.first.utc if feed.first is not None else None)
    except ClockError as exc:
        raise ReplayError(str(exc)) from None
    if feed.first is None:
        log.warning("%s holds no dated fix: events need a position, so this replay cannot produce any", nmea)
    health.update(gnss="ok" if feed.first is not None else "no_fix")
    source = FrameSource(CameraConfig(source=str(video), file_realtime=realtime, no_frame_after_s=30.0), health)
    t0 = time.monotonic()
    last_index = -1
    with source:
        while True:
            frame = source.latest(timeout=30.0)
            if frame is None:
                break
            t_frame = clock.frame_mono(frame.index)
            feed.until(t_frame)
            pipeline.process(frame.image, t_frame, utc=clock.frame_utc(frame.index))
            last_index = frame.index
            if progress:
                progress(frame.index + 1, info.frames)
    pipeline.finish()
    wall = max(time.monotonic() - t0, 1e-9)
    summary = pipeline.summary()
    summary.update(video_frames=last_index + 1, dropped=source.dropped, fixes=feed.fed, wall_s=round(wall, 2),
                   fps=round(summary["frames"] / wall, 2), clock=clock.source,
                   start_utc=clock.start_utc.isoformat().replace("+00:00", "Z"), video_fps=clock.fps)
    feed.read_rest()
    warning = overlap_warning((clock.frame_utc(0), clock.frame_utc(max(last_index, 0))), feed, nmea)
    if warning:
        log.warning("%s", warning)
        summary["warnings"] = [warning]
    return summary


__all__ = ["FixFeed", "ReplayClock", "ReplayError", "probe_video", "replay_drive"]
