"""A device as the server sees it: its state (stale when silent) and, in words, why it may be quiet.

One definition for `GET /api/v1/devices`, `fleet-server device ls` and the `road_devices` metric: the API said
`stale` where `device ls` and the metric still said `online`, so an alert on stale devices could never fire.
The reasons come from the box's own last status (its health board, counters and clock) and from the messages
the server refused from it, which were only in the `rejected` table before.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from roadmon_contract.status import HEALTH_WORDS, SPARSE_FRAMES_M

# A status whose sent_at is this far from when the server received it comes from a box whose clock is wrong:
# its events are dated wrongly (and refused once older than ingest.horizon_days). Transit takes seconds.
CLOCK_OFF_S = 120.0

FINE = {"ok", "connected", "starting"}

DEVICES = "SELECT id, name, state, last_seen, revoked_at, state_at, last_status, queue_depth FROM devices ORDER BY id"
REJECTED_24H = """
SELECT device_id, count(*), mode() WITHIN GROUP (ORDER BY reason)
FROM rejected WHERE received_at > now() - interval '24 hours' AND device_id IS NOT NULL GROUP BY device_id
"""


def state_of(state: str | None, last_seen: datetime | None, revoked_at: datetime | None, now: datetime,
             stale_after_s: float) -> str:
    """revoked, stale (online by its last status but silent for stale_after_s), or the last reported state."""
    if revoked_at is not None:
        return "revoked"
    if state == "online" and (last_seen is None or now - last_seen > timedelta(seconds=stale_after_s)):
        return "stale"
    return state or "unknown"


def clock_offset_s(status: dict[str, Any], received_at: datetime | None) -> float | None:
    """How far the box's clock was ahead (+) or behind (-) when it sent its last status; None if unknown."""
    sent = status.get("sent_at")
    if not isinstance(sent, str) or received_at is None:
        return None
    try:
        sent_at = datetime.fromisoformat(sent.replace("Z", "+00:00"))
    except ValueError:
        return None
    if sent_at.tzinfo is None:
        return None
    return round((sent_at - received_at).total_seconds(), 1)


def problems(status: dict[str, Any], received_at: datetime | None, refused: tuple[int, str] | None) -> list[str]:
    """Why the box may be quiet, in words, from its last status and the messages refused from it in 24 h."""
    out = []
    health = status.get("health") if isinstance(status.get("health"), dict) else {}
    for part, value in health.items():
        if part in ("broker", "gnss_problem") or value is None or value in FINE:
            continue
        words = HEALTH_WORDS.get((part, value), f"{part} {value}")
        why = health.get("gnss_problem") if part == "gnss" else None  # the reader's reason: junk is not silence
        out.append(f"{words} ({why})" if isinstance(why, str) and why else words)
    offset = clock_offset_s(status, received_at)
    if offset is not None and abs(offset) > CLOCK_OFF_S:
        out.append(f"clock {_duration(abs(offset))} {'ahead of' if offset > 0 else 'behind'} the server's: "
                   "its findings are dated wrongly (NTP on the box)")
    step = status.get("m_per_frame")
    if isinstance(step, int | float) and step > SPARSE_FRAMES_M:
        out.append(f"a frame every {step:.1f} m while driving: too slow for its speed, defects are missed")
    counters = status.get("counters") if isinstance(status.get("counters"), dict) else {}
    unplaced = counters.get("events_no_fix")
    if isinstance(unplaced, int) and unplaced > 0:
        out.append(f"{unplaced} defects seen without a usable position since the agent started")
    if refused:
        count, reason = refused
        out.append(f"{count} messages refused in 24 h, most for: {reason[:160]}")
    return out


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def device_rows(conn: Any, now: datetime, stale_after_s: float) -> list[dict[str, Any]]:
    """Every device with its state and problems; keys as the API answers them."""
    refused = {r[0]: (int(r[1]), str(r[2])) for r in conn.execute(REJECTED_24H).fetchall()}
    rows = conn.execute(DEVICES).fetchall()
    out = []
    for dev_id, name, state, last_seen, revoked_at, state_at, status, queue_depth in rows:
        status = status if isinstance(status, dict) else {}
        out.append({"id": dev_id, "name": name, "state": state_of(state, last_seen, revoked_at, now, stale_after_s),
                    "last_seen": last_seen, "queue_depth": queue_depth,
                    "health": {k: v for k, v in (status.get("health") or {}).items() if k != "broker"},
                    "status_sent_at": status.get("sent_at"), "clock_offset_s": clock_offset_s(status, state_at),
                    "refused_24h": refused.get(dev_id, (0, ""))[0],
                    "problems": problems(status, state_at, refused.get(dev_id))})
    return out
