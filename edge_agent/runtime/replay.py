"""`edge-agent replay`: the live pipeline on a recorded drive (video + NMEA).

Frame k's time is start_utc + k / fps (edge_agent.runtime.replay_clock); before the pipeline sees frame k, the
position filter gets every recorded fix up to that time, as a live GNSS reader would have delivered them.
Frames come from the same FrameSource as a camera: as fast as the pipeline takes them (every frame,
repeatable) or, with realtime, at the file's rate, dropping what the pipeline cannot keep up with.

`edge-agent run` on a config whose camera is a video file and whose GNSS is an NMEA recording with drive.json
beside the video (what `edge-agent sim drive` writes) times its frames the same way (`RecordedDrive`): played
side by side from their starts, an NMEA recording that begins before the video (drive.json's nmea_lead_s)
put every defect that many seconds of driving off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2

from edge_agent.camera.capture import FrameSource
from edge_agent.config import AgentConfig
from edge_agent.config.camera import CameraConfig, source_kind
from edge_agent.gnss.epochs import GPS_ROLLOVER
from edge_agent.runtime.assemble import Agent
from edge_agent.runtime.replay_clock import SIDECAR, ClockError, ReplayClock, clock_for
from roadmon_contract.times import utc_iso

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
        self.last_fed: Any = None                 # the newest fix handed to the filter
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
            self.last_fed = self._next
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
    video, fixes = (" .. ".join(utc_iso(t, "seconds") for t in pair)
                    for pair in ((start, end), (feed.first_utc, feed.last_utc)))
    text = (f"the NMEA does not overlap the video's time: video {video}, NMEA {nmea.name} {fixes}; "
            "no frame had a position ")
    behind = start - feed.first_utc
    if abs(behind - GPS_ROLLOVER) < timedelta(days=2):
        # A receiver counting weeks from an old 1024-week window: its dates are 19.6 years back, to the day.
        return text + (f"(the NMEA is {behind.days} days, 1024 weeks, behind: a GPS week rollover; set "
                       f"gnss.date_floor to a date before the drive, e.g. {start.date().replace(day=1)})")
    return text + f"(another drive's recording, or a wrong --video-start or {SIDECAR})"


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


def recordings_of(cfg: AgentConfig) -> tuple[Path, Path] | None:
    """(video, NMEA) when CFG's camera is a video file and its GNSS an NMEA recording with drive.json beside
    the video, which dates the frames; None otherwise. Both recordings without drive.json: a warning, since
    nothing says how the two line up."""
    if source_kind(cfg.camera.source) != "file" or cfg.gnss.source != "file" or not cfg.gnss.file:
        return None
    video, nmea = Path(cfg.camera.source), Path(cfg.gnss.file)
    if (video.parent / SIDECAR).exists():
        return video, nmea
    log.warning("camera and GNSS are both recordings but there is no %s beside %s: they play side by side from "
                "their starts, so an NMEA recording that starts earlier or later than the video places every "
                "defect off by that much; write %s (start_utc, fps) or use `edge-agent replay --video-start`",
                SIDECAR, video, SIDECAR)
    return None


class RecordedDrive:
    """`edge-agent run` on recordings: frame k is dated as in `replay_drive` (drive.json's start_utc + k / fps),
    and before it the position filter gets every recorded fix up to that time, so defects land where replay
    puts them whatever the pace of the camera. Takes the GNSS reader's place (and its health)."""

    def __init__(self, agent: Agent, video: Path, nmea: Path) -> None:
        from edge_agent.gnss.source import fixes_from_file

        if not nmea.is_file():
            raise ReplayError(f"{nmea}: no such NMEA file")
        self.health = agent.health
        self.feed = FixFeed(iter(fixes_from_file(nmea, agent.cfg.gnss)), agent.position_filter)
        first = self.feed.first.utc if self.feed.first is not None else None
        try:
            self.clock = clock_for(video, probe_video(video).fps, None, first)
        except ClockError as exc:
            raise ReplayError(str(exc)) from None
        log.info("camera and GNSS are recordings of one drive: frames dated from %s (%s), %.1f s after the "
                 "NMEA's first fix", video.with_name(SIDECAR), utc_iso(self.clock.start_utc, "seconds"),
                 (self.clock.start_utc - first).total_seconds() if first else float("nan"))
        self.health.update(gnss="ok" if first is not None else "no_fix")

    def frame_time(self, index: int) -> tuple[float, datetime]:
        """(time on the filter's clock, UTC) of frame INDEX, after feeding the fixes up to it."""
        t_frame = self.clock.frame_mono(index)
        fed = self.feed.fed
        self.feed.until(t_frame)
        if self.feed.fed > fed:
            self._report(self.feed.last_fed)
        return t_frame, self.clock.frame_utc(index)

    def _report(self, fix: Any) -> None:
        """The GNSS state on the health board, as the live reader reports it (a real fix is 'ok')."""
        if fix.mode > 0 and not fix.estimated:
            self.health.update(gnss="ok", last_fix_mono=time.monotonic())
        else:
            self.health.update(gnss="no_fix")


__all__ = ["FixFeed", "RecordedDrive", "ReplayClock", "ReplayError", "probe_video", "recordings_of", "replay_drive"]
