"""Outbox settings (owned by the outbox module): where the queue lives, how durable a write is, how much
disk it may take and what gives way first when the disk fills."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from roadmon_contract.config_base import Section


class OutboxConfig(Section):
    file: str = Field("outbox.db", min_length=1,
                      description="SQLite file of the queue; a relative path is taken inside device.state_dir")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite synchronous mode for new events. FULL: an event is on disk when add_event returns, "
                    "even across a power cut (one fsync per event). NORMAL: faster, never corrupts, but nothing is "
                    "fsynced until the queue's next checkpoint (every 4,000 pages, ~550 events with thumbnails): "
                    "a power cut can lose all of them (a process crash loses nothing); doctor warns")
    budget_mb: float = Field(512, gt=0, description="Most disk the outbox may use, MB")
    free_floor_mb: float = Field(200, ge=0,
                                 description="Free space to leave on the outbox's filesystem, MB; below it the "
                                             "outbox frees space as if the budget were reached")
    retention_days: float = Field(7, ge=0,
                                  description="Confirmed rows are kept this long (for `fleet-server cmd resend` "
                                              "after a server restore, and for inspection), then deleted; "
                                              "sooner when space is needed")
    low_severity: float = Field(0.3, ge=0, le=1,
                                description="Events with severity below this are 'low severity': their thumbnails "
                                            "go first and new ones are refused when the disk can hold no more")
    guard_every: int = Field(1, ge=1,
                             description="Check the disk budget every N writes (each check is a statvfs and two "
                                         "PRAGMAs, a few microseconds)")
