"""Times as the contract writes them: UTC with a Z, to the millisecond (events, coverage, statuses, the box's
queue, whose stamps are compared as text, so they must all have one form) or to the second (commands, what people
read)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal


def utc_iso(t: datetime, timespec: Literal["milliseconds", "seconds"] = "milliseconds") -> str:
    """T in UTC: 2026-11-28T13:45:32.120Z (or 2026-11-28T13:45:32Z), truncated, never rounded up."""
    return t.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def utc_now_iso(ago_s: float = 0.0) -> str:
    """Now (or AGO_S seconds before) in UTC, to the millisecond."""
    return utc_iso(datetime.now(UTC) - timedelta(seconds=ago_s))
