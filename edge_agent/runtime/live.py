"""`edge-agent run`: camera + GNSS + detector + outbox (+ uplink) in one process, under systemd.

READY=1 goes to systemd once the camera delivered a frame (or startup_wait_s passed), the GNSS reader runs, the
model is loaded and the outbox is open. The main loop pings the watchdog only while frames arrive, inference
works and the outbox accepts writes, so a wedged camera or a full disk gets the agent restarted by systemd
rather than running blind. SIGTERM/SIGINT end the loop; open tracks become events before the agent exits.
So does a valid cmd/config-reload (runtime/config_reload.py): `reload_requested` is then set and the caller
exits with EXIT_CONFIG_RELOAD for the service manager to start the agent again on the new config.

A video file as camera with an NMEA recording as GNSS and drive.json beside the video (a simulated or recorded
drive) is dated as `replay` dates it (runtime/replay.RecordedDrive) instead of reading the NMEA on its own.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.camera.capture import FrameSource
from edge_agent.config import AgentConfig, file_sha256
from edge_agent.health import HealthBoard
from edge_agent.runtime import sdnotify
from edge_agent.runtime.assemble import Agent, build_agent
from edge_agent.runtime.config_reload import ConfigReload
from edge_agent.runtime.pipeline import Pipeline
from edge_agent.runtime.replay import RecordedDrive, recordings_of
from roadmon_contract.status import SPARSE_FRAMES_M, sparse_frames_fix, sparse_frames_words

log = logging.getLogger(__name__)

STARTUP_WAIT_S = 30.0    # longest wait for the first frame before READY is sent anyway (health says why)
STATUS_EVERY_S = 10.0
MAX_FAILURES_IN_A_ROW = 25  # frames the pipeline may fail on in a row before the watchdog is starved
SLOW_SAID_EVERY_S = 600.0  # a box too slow for its speed says so in its log this often while it lasts


class LiveAgent:
    """The assembled agent (runtime.assemble) plus the live inputs: the GNSS reader and the camera. Runs the
    main loop until stop() (or a signal)."""

    def __init__(self, cfg: AgentConfig, *, uplink: bool | None = None, health: HealthBoard | None = None,
                 config_path: Path | str | None = None) -> None:
        self.cfg = cfg
        self.health = health or HealthBoard()
        self.use_uplink = cfg.uplink.enabled if uplink is None else uplink
        self.config_path = config_path  # where cmd/config-reload reads the config again (None: not served)
        if config_path is not None:
            self.health.update(config_sha256=file_sha256(config_path))
        self.reload_requested = False
        self.stop_event = threading.Event()
        self.agent: Agent | None = None
        self.parts: dict[str, Any] = {}
        self.recorded: RecordedDrive | None = None  # both inputs are recordings of one drive
        self._failures = 0
        self._slow_said: float | None = None

    def stop(self, *_: object) -> None:
        self.stop_event.set()

    def request_reload(self) -> None:
        """A valid new config was announced to the server: stop as on SIGTERM, then exit for a restart."""
        self.reload_requested = True
        self.stop_event.set()

    def start(self) -> Pipeline:
        """Open outbox, model, uplink, GNSS and camera; raises with a clear message when one cannot start."""
        from edge_agent.gnss.source import GnssReader

        reload = ConfigReload(self.config_path, self.cfg, self.request_reload) if self.config_path else None
        agent = self.agent = build_agent(self.cfg, health=self.health, uplink=self.use_uplink, config_reload=reload)
        recorded = recordings_of(self.cfg)
        if recorded is not None:
            self.recorded = RecordedDrive(agent, *recorded)
        else:
            self.parts["gnss"] = GnssReader(self.cfg.gnss, agent.position_filter, self.health)
            self.parts["gnss"].start()
        self.parts["camera"] = FrameSource(self.cfg.camera, self.health).start()
        return agent.pipeline

    def run(self) -> dict[str, Any]:
        """The main loop; returns the pipeline's summary when stopped."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        try:
            pipeline = self.start()
        except BaseException:
            self.close()
            raise
        camera: FrameSource = self.parts["camera"]
        ready_sent = False
        ping_every = sdnotify.watchdog_interval_s()
        last_ping = last_status = started = time.monotonic()
        try:
            while not self.stop_event.is_set():
                frame = camera.latest(timeout=0.5)
                if frame is not None:
                    self.process(pipeline, frame)
                elif camera.finished:  # a video file ended: latest() no longer waits, and the loop spun a core
                    self.stop_event.wait(0.5)
                now = time.monotonic()
                if frame is None and self.recorded is None:
                    pipeline.note_position(now)  # no frames: the status still says where the van is
                if not ready_sent and (frame is not None or now - started > STARTUP_WAIT_S):
                    sdnotify.ready(self.status_line())
                    ready_sent = True
                if ping_every and now - last_ping >= ping_every and self.healthy(camera, pipeline):
                    sdnotify.watchdog_ping()
                    last_ping = now
                if now - last_status >= STATUS_EVERY_S:
                    sdnotify.status(self.status_line())
                    self.say_if_too_slow(now)
                    last_status = now
        finally:
            sdnotify.stopping()
            pipeline.finish()
            self.close()
        summary = pipeline.summary()
        summary["dropped"] = camera.dropped
        return summary

    def process(self, pipeline: Pipeline, frame: Any) -> None:
        """One frame; a failure is logged and counted, never the end of the agent (the watchdog notices a
        pipeline that keeps failing, because the health it checks stops being 'ok')."""
        try:
            t_mono, utc = (frame.t_mono, None) if self.recorded is None else self.recorded.frame_time(frame.index)
            pipeline.process(frame.image, t_mono, utc=utc)
        except Exception:
            log.exception("pipeline failed on a frame")
            self.health.count("pipeline_errors")
            self._failures += 1
        else:
            self._failures = 0

    def healthy(self, camera: FrameSource, pipeline: Pipeline) -> bool:
        """Frames arrive, the detector works, the outbox takes writes: only then is the watchdog fed."""
        snap = self.health.snapshot()
        return camera.healthy() and snap["detector"] == "ok" and snap["outbox"] in ("ok", "degraded") \
            and self._failures < MAX_FAILURES_IN_A_ROW

    def say_if_too_slow(self, now: float) -> None:
        """Log a box that processes frames too far apart for its speed (only `status` and the server said so: the
        journal of a box missing a third of its potholes was silent)."""
        snap = self.health.snapshot()
        step, fps, ms = snap.get("m_per_frame"), snap.get("fps"), snap.get("inference_ms")
        speed = (snap.get("fix") or {}).get("speed_mps")
        if not isinstance(step, int | float) or step <= SPARSE_FRAMES_M:
            return
        if not isinstance(speed, int | float) or speed < self.cfg.tracker.heading_min_speed_mps:
            return  # parked or without a fix: the rate measured while driving is history, not news
        if self._slow_said is not None and now - self._slow_said < SLOW_SAID_EVERY_S:
            return
        self._slow_said = now
        log.warning("%s (%s frames a second through the detector, %s ms each); %s", sparse_frames_words(step),
                    "-" if fps is None else f"{fps:.1f}", "-" if ms is None else f"{ms:.0f}",
                    sparse_frames_fix(fps, ms, self.cfg.detector.mirror_pass))

    def status_line(self) -> str:
        snap = self.health.snapshot()
        fps = snap.get("fps")
        return (f"camera {snap['camera']}, gnss {snap['gnss']}, detector {snap['detector']}, "
                f"outbox {snap['outbox']}, uplink {snap['uplink']}, fps {fps if fps is not None else '-'}")

    def close(self) -> None:
        for name in ("camera", "gnss"):
            part = self.parts.get(name)
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    log.exception("stopping %s failed", name)
        if self.agent is not None:
            self.agent.close()
