"""What a check returns, and what checks share while they run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from edge_agent.config import AgentConfig


class Level(StrEnum):
    GREEN = "green"     # works
    YELLOW = "yellow"   # works, or may, but something needs a look
    RED = "red"         # will not work; doctor exits non-zero
    SKIPPED = "skipped"  # could not be checked because an earlier check failed (e.g. no valid config)


@dataclass
class CheckResult:
    name: str
    level: Level
    summary: str                 # one line: what was found, with figures
    explanation: str = ""        # why that matters / what it means
    hint: str = ""               # what to do about it
    data: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level.value, "summary": self.summary,
                "explanation": self.explanation, "hint": self.hint, "data": self.data,
                "duration_s": round(self.duration_s, 3)}


@dataclass
class Options:
    camera_seconds: float = 3.0      # longest time spent reading frames
    camera_frames: int = 30          # stop reading after this many frames
    gnss_seconds: float = 5.0        # longest time spent listening to the receiver
    model_runs: int = 5              # timed inferences after one warm-up


@dataclass
class Context:
    """The config (None when it did not load) and facts one check leaves for a later one."""

    config_path: str
    cfg: AgentConfig | None = None
    options: Options = field(default_factory=Options)
    gnss_utc: datetime | None = None       # newest UTC from a live receiver
    gnss_utc_mono: float | None = None     # time.monotonic() when it arrived
    gnss_no_time: str | None = None        # why the GNSS check left no UTC to compare with (said by the clock)
    frame_shape: tuple[int, int] | None = None  # (height, width) the camera delivered
