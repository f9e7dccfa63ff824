"""The agent's live health, shared between threads: the pipeline writes it, the uplink's heartbeat,
the systemd watchdog and `edge-agent status` read it."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Health:
    camera: str = "starting"          # ok | frozen | blank | no_frames | lost | starting
    gnss: str = "starting"            # ok | no_fix | stale | lost | starting
    gnss_problem: str | None = None   # why the reader last lost the receiver (junk bytes, silence, unplugged)
    gnss_fix: str | None = None       # the kind of its last measured fix: "3D fix", "RTK fixed" (epochs.fix_kind)
    clock_offset_s: float | None = None  # system clock minus a live receiver's UTC at its last fix
    config_sha256: str | None = None  # of the config file the agent started from
    detector: str = "starting"        # ok | failed | starting
    outbox: str = "starting"          # ok | degraded | full | starting
    uplink: str = "starting"          # connected | connecting | bad_credentials | not_authorised | offline
    fps: float | None = None
    inference_ms: float | None = None
    m_per_frame: float | None = None  # metres driven per processed frame while moving (roadmon_contract.status)
    frames_dropped: int = 0
    last_frame_mono: float | None = None
    fix: dict[str, Any] | None = None
    last_fix_mono: float | None = None  # when the receiver last gave a real fix (the pipeline's `fix` is per frame)
    model: dict[str, Any] | None = None
    mount: dict[str, Any] | None = None  # what the lane markings say of the camera mount (perception.mount_watch)
    last_unplaced: dict[str, Any] | None = None  # {"at": UTC, "why": ...} of the last defect that had no position
    counters: dict[str, int] = field(default_factory=dict)


class HealthBoard:
    """A lock around one Health record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._health = Health()
        self._picture_fault: str | None = None  # frozen | blank, judged by the pipeline (camera.picture)

    def update(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._health, key, value)

    def frame_arrived(self, t_mono: float) -> None:
        """The capture got a frame: the camera works, unless its picture is frozen or blank."""
        with self._lock:
            self._health.last_frame_mono = t_mono
            self._health.camera = self._picture_fault or "ok"

    def picture(self, fault: str | None) -> None:
        """The pipeline's verdict on the picture (None: alive); the capture's own states (lost...) stay first."""
        with self._lock:
            self._picture_fault = fault
            if self._health.camera in ("ok", "frozen", "blank"):
                self._health.camera = fault or "ok"

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._health.counters[name] = self._health.counters.get(name, 0) + n

    def set_count(self, name: str, n: int) -> None:
        """A counter that is a level rather than a sum (e.g. driven_m_since_event, which an event resets)."""
        with self._lock:
            self._health.counters[name] = n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap = asdict(self._health)
        if snap["last_frame_mono"] is not None:
            snap["frame_age_s"] = round(time.monotonic() - snap["last_frame_mono"], 3)
        if snap["last_fix_mono"] is not None:
            snap["fix_age_s"] = round(time.monotonic() - snap["last_fix_mono"], 3)
        return snap
