"""Frames from a camera or a video file, newest first.

A grabber thread reads the source as fast as it delivers and keeps only the newest frame: a detector slower
than the camera takes the latest one and the skipped frames are counted as dropped, so no backlog builds.
A video file read "as fast as possible" is the exception: there the grabber decodes a few frames ahead and
then waits for the consumer, so every frame is processed (replays must be repeatable). A lost camera is
reopened with a growing backoff; "no frame for N s" is a health state, never an exception.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.camera.presence import presence_probe
from edge_agent.config.camera import CameraConfig, source_kind
from edge_agent.health import HealthBoard

# source_kind lives with the camera's config (the config resolves a relative video file by it); named here too.
__all__ = ["Frame", "FrameSource", "open_capture", "source_kind"]

log = logging.getLogger(__name__)

FILE_PREFETCH = 4  # frames a file read flat out may decode ahead, to ride out slow frames (keyframes)
PROBE_EVERY_S = 0.5  # how often a gone camera is looked for while a reopen waits


@dataclass(frozen=True)
class Frame:
    image: np.ndarray   # BGR, as OpenCV delivers it
    t_mono: float       # time.monotonic() when the frame was grabbed
    index: int          # frames read from the source since it was (re)opened; for a file, the frame number


def open_capture(cfg: CameraConfig, timeout_s: float | None = None) -> cv2.VideoCapture:
    """Open cfg.source with the backend its kind needs; the caller checks isOpened(). A URL camera that accepts
    the connection and never answers blocks FFmpeg's open and reads TIMEOUT_S at most (default twice
    no_frame_after_s; FFmpeg's own is 30 s, which doctor's 3-s look at the camera used to wait out)."""
    kind = source_kind(cfg.source)
    if kind == "device":
        target: int | str = int(cfg.source) if cfg.source.strip().isdigit() else cfg.source
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
    elif kind == "gstreamer":
        if "GStreamer:                   YES" not in cv2.getBuildInformation():
            log.error("camera source is a GStreamer pipeline, but this OpenCV build has no GStreamer support")
        cap = cv2.VideoCapture(cfg.source, cv2.CAP_GSTREAMER)
    elif kind == "url":
        ms = int(1000 * (timeout_s or 2 * cfg.no_frame_after_s))
        cap = cv2.VideoCapture(cfg.source, cv2.CAP_FFMPEG,
                               [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    else:
        cap = cv2.VideoCapture(cfg.source, cv2.CAP_FFMPEG)
    if cap.isOpened() and kind in ("device", "url"):
        # Capture drivers queue frames of their own; one buffered frame keeps "newest" truly newest.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    if cap.isOpened() and kind != "file":
        if cfg.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        if cfg.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        if cfg.fps:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
    return cap


class FrameSource:
    """A grabber thread with newest-frame hand-off; `latest()` is called from the main loop."""

    def __init__(self, cfg: CameraConfig, health: HealthBoard | None = None) -> None:
        self.cfg = cfg
        self.health = health
        self.kind = source_kind(cfg.source)
        self.wait_for_consumer = self.kind == "file" and not cfg.file_realtime
        self.grabbed = 0
        self.dropped = 0
        self.reopens = 0
        self.finished = False            # a video file reached its end (live sources never finish)
        self.file_fps: float | None = None
        self._cond = threading.Condition()
        self._frames: deque[Frame] = deque()   # live: at most the newest one; a file read flat out: a few ahead
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_frame_mono: float | None = None
        self._started_mono = time.monotonic()
        self._present = presence_probe(cfg.source)

    # -- consumer side -------------------------------------------------------------------------------------
    def start(self) -> FrameSource:
        self._started_mono = time.monotonic()
        self._set_camera("starting")
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()
        return self

    def latest(self, timeout: float = 1.0) -> Frame | None:
        """The newest frame not handed out yet, waiting up to TIMEOUT; None when none came (or the file ended)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._frames and not self.finished and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            frame = self._frames.popleft() if self._frames else None
            self._cond.notify_all()  # a grabber waiting for the consumer may go on
        if frame is None:
            self._check_stalled()
        return frame

    def frame_age_s(self) -> float | None:
        last = self._last_frame_mono
        return None if last is None else time.monotonic() - last

    def healthy(self) -> bool:
        """A frame arrived within no_frame_after_s."""
        age = self.frame_age_s()
        return age is not None and age <= self.cfg.no_frame_after_s

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FrameSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_stalled(self) -> None:
        if self.finished:
            return
        since = self._last_frame_mono or self._started_mono
        if time.monotonic() - since > self.cfg.no_frame_after_s:
            self._set_camera("no_frames")

    # -- grabber side --------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self.cfg.reopen_initial_s
        while not self._stop.is_set():
            cap = open_capture(self.cfg)
            if not cap.isOpened():
                cap.release()
                if self.kind == "file" and not Path(self.cfg.source).exists():
                    log.error("camera source %s: no such file", self.cfg.source)
                else:
                    log.warning("camera source %s did not open; retrying in %.1f s", self.cfg.source, backoff)
                self._set_camera("lost")
                self._wait_before_reopen(backoff)
                backoff = min(backoff * 2, self.cfg.reopen_max_s)
                continue
            if self.grabbed or self.reopens:
                self.reopens += 1
                if self.health:
                    self.health.count("camera_reopens")
            got_any = self._read_until_broken(cap)
            cap.release()
            if self.kind == "file" or self._stop.is_set():
                break  # a stop is not a lost camera: every clean stop's last status said "camera lost"
            if got_any:
                backoff = self.cfg.reopen_initial_s
            self._set_camera("lost")
            log.warning("camera source %s stopped delivering; reopening in %.1f s", self.cfg.source, backoff)
            self._wait_before_reopen(backoff)
            backoff = min(backoff * 2, self.cfg.reopen_max_s)
        with self._cond:
            if self.kind == "file":
                self.finished = True
                self._set_camera("ended")
            self._cond.notify_all()
        if self.kind == "file" and not self._stop.is_set():
            # The agent keeps running (GNSS, uplink) with no frames: say why the detector went quiet.
            log.info("camera source %s: the video file ended after %d frames; no more frames will come",
                     self.cfg.source, self.grabbed)

    def _wait_before_reopen(self, backoff: float) -> None:
        """BACKOFF seconds, or less when a camera that was gone (no device node, no open port) is back."""
        if self._present is None or self._present():
            self._stop.wait(backoff)
            return
        deadline = time.monotonic() + backoff
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(PROBE_EVERY_S, left)):
                return
            if self._present():
                log.info("camera source %s is there again; reopening now", self.cfg.source)
                return

    def _read_until_broken(self, cap: cv2.VideoCapture) -> bool:
        """Read frames until the source fails, the file ends or stop(); True when at least one came."""
        fps = cap.get(cv2.CAP_PROP_FPS) if self.kind == "file" else 0.0
        self.file_fps = fps if fps and fps > 0 else None
        # A file played in real time waits for each frame's moment; one without a frame rate is read flat out.
        pace_fps = self.file_fps if self.kind == "file" and self.cfg.file_realtime else None
        t0 = time.monotonic()
        index = 0
        while not self._stop.is_set():
            if pace_fps is not None:
                self._stop.wait(max(0.0, t0 + index / pace_fps - time.monotonic()))
            ok, image = cap.read()
            if not ok or image is None:
                return index > 0
            self._deliver(Frame(image=image, t_mono=time.monotonic(), index=index))
            index += 1
        return index > 0

    def _deliver(self, frame: Frame) -> None:
        with self._cond:
            if self.wait_for_consumer:
                while len(self._frames) >= FILE_PREFETCH and not self._stop.is_set():
                    self._cond.wait(0.5)
            elif self._frames:
                self._frames.clear()
                self.dropped += 1
                if self.health:
                    self.health.update(frames_dropped=self.dropped)
            self._frames.append(frame)
            self.grabbed += 1
            self._last_frame_mono = frame.t_mono
            self._cond.notify_all()
        if self.health:
            self.health.frame_arrived(frame.t_mono)

    def _set_camera(self, state: str) -> None:
        if self.health:
            self.health.update(camera=state)
