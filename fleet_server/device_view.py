"""A device as the server sees it: its state (stale when silent) and, in words, why it may be quiet.

One definition for `GET /api/v1/devices`, `fleet-server device ls` and the `road_devices` metric: the API said
`stale` where `device ls` and the metric still said `online`, so an alert on stale devices could never fire.
The reasons come from the box's own last status (its health board, counters and clock) and from the messages
the server refused from it, which were only in the `rejected` table before.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

from roadmon_contract.status import HEALTH_WORDS, SPARSE_FRAMES_M, mount_moved_words, sparse_frames_words

# A status whose sent_at is this far from when the server received it comes from a box whose clock is wrong:
# its events are dated wrongly (and refused once older than ingest.horizon_days). Transit takes seconds.
CLOCK_OFF_S = 120.0
# Defects the box could not place count as a problem while the last one is this recent (seconds before the status).
# Under RoadDeviceProblem's 15 minutes: one tunnel never pages, a receiver that keeps failing does (an hour paged
# for an hour after a single dropout, with nothing left to fix).
UNPLACED_RECENT_S = 600.0

# "ended": a video file as the camera (a replay, the demo) came to its end, as it should.
FINE = {"ok", "connected", "starting", "ended"}
HEALTH_PARTS = ("camera", "gnss", "detector", "outbox")
PROBLEM_CODES = ("camera", "gnss", "detector", "outbox", "clock", "sparse_frames", "mount", "unplaced",
                 "finds_nothing", "refused")

# %(one)s is NULL for every device, or one device's id (`/devices/{id}` used to build all 10,000 to return one).
DEVICES = """
SELECT id, name, state, last_seen, revoked_at, state_at, last_status, queue_depth, dated_ahead_s, dated_ahead_at,
       finds_nothing
FROM devices
WHERE %(one)s::text IS NULL OR id = %(one)s ORDER BY id
"""
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
    sent_at = _time(status.get("sent_at"))
    if sent_at is None or received_at is None:
        return None
    return round((sent_at - received_at).total_seconds(), 1)


def problems(status: dict[str, Any], received_at: datetime | None, refused: tuple[int, str] | None) -> list[str]:
    """Why the box may be quiet, in words, from its last status and the messages refused from it in 24 h."""
    return [words for _, words in coded_problems(status, received_at, refused)]


def dated_ahead(seconds: float | None, at: datetime | None, now: datetime) -> float | None:
    """How far ahead of their arrival the device's sightings were dated, if that was in the last 24 h."""
    return seconds if seconds is not None and at is not None and now - at < timedelta(hours=24) else None


def coded_problems(status: dict[str, Any], received_at: datetime | None,
                   refused: tuple[int, str] | None, ahead_s: float | None = None,
                   blind: Any = None) -> list[tuple[str, str]]:
    """`problems` with a code each (the health part: camera, gnss, detector, outbox; or clock, sparse_frames, mount,
    unplaced, finds_nothing, refused), for scripts and the road_device_problems metric. AHEAD_S: `dated_ahead`;
    BLIND: `devices.finds_nothing` (fleet_server/blind_boxes.py)."""
    out = []
    health = raw if isinstance(raw := status.get("health"), dict) else {}
    for part in HEALTH_PARTS:
        value = health.get(part)
        # Only the parts an agent reports, by their string states: a status with {"camera": {"a": 1}} took the
        # devices API, /metrics and `device ls` down (unhashable), and any name became a metric label.
        if not isinstance(value, str) or value in FINE:
            continue
        words = HEALTH_WORDS.get((part, value), f"{part} {value[:40]}")
        why = health.get("gnss_problem") if part == "gnss" else None  # the reader's reason: junk is not silence
        out.append((part, f"{words} ({why[:300]})" if isinstance(why, str) and why else words))
    offset = clock_offset_s(status, received_at)
    if offset is not None and abs(offset) > CLOCK_OFF_S:
        side = "ahead of" if offset > 0 else "behind"
        if isinstance(status.get("clock_offset_vs_gnss_s"), int | float):
            # Its receiver sends dates, and the agent dates findings by GNSS: they are right (a box 3 h behind
            # was said to date them wrongly while every captured_at was GNSS time).
            out.append(("clock", f"clock {_duration(abs(offset))} {side} the server's: its findings are dated by "
                                 "GNSS and are right, its logs and status times are not (NTP on the box)"))
        else:
            out.append(("clock", f"clock {_duration(abs(offset))} {side} the server's: its findings are dated "
                                 "wrongly (NTP on the box)"))
    elif ahead_s is not None:  # a phone: no status, only its sightings' dates
        out.append(("clock", f"sightings dated up to {_duration(ahead_s)} after they arrived (in 24 h): its clock "
                             "or time zone is wrong, and they show in the future on the map"))
    step = status.get("m_per_frame")
    if isinstance(step, int | float) and step > SPARSE_FRAMES_M:
        out.append(("sparse_frames", sparse_frames_words(step)))
    if (moved := mount_moved_words(status.get("mount"))) is not None:
        out.append(("mount", moved))
    if (unplaced := _unplaced(status)) is not None:
        out.append(("unplaced", unplaced))
    if (nothing := _finds_nothing(blind)) is not None:
        out.append(("finds_nothing", nothing))
    if refused:
        count, reason = refused
        out.append(("refused", f"{count} messages refused in 24 h, most for: {reason[:160]}"))
    return out


def _unplaced(status: dict[str, Any]) -> str | None:
    """Defects seen without a usable position, while that is recent: the count is the agent's since it started,
    and said "no position" for hours after the receiver was back. Judged on the box's own clock (the last one's
    time against the status's), which may be off; an agent before `last_unplaced` is judged on its count."""
    counters = raw if isinstance(raw := status.get("counters"), dict) else {}
    count = counters.get("events_no_fix")
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        return None
    text = f"{count} defects seen without a usable position since the agent started"
    if "last_unplaced" not in status:
        return text
    last = raw_last if isinstance(raw_last := status.get("last_unplaced"), dict) else {}
    at, sent = _time(last.get("at")), _time(status.get("sent_at"))
    if at is None or sent is None or (sent - at).total_seconds() > UNPLACED_RECENT_S:
        return None
    age_s = (sent - at).total_seconds()
    why = last.get("why")
    return (f"{text}, the last {'under a minute' if age_s < 60 else _duration(age_s)} before its status"
            + (f": {why}" if isinstance(why, str) and why else ""))


def _finds_nothing(blind: Any) -> str | None:
    """The words for a box that passed defects the fleet finds and reported none (blind_boxes.judge). They name
    when its misses began: "30 times in 7 days" (the window) read as a week of blindness for misses of 8 hours,
    and "since its last finding 47.8 h before" left the technician asking before what."""
    if not isinstance(blind, dict) or not isinstance(misses := blind.get("misses"), int):
        return None
    first, last = _time(blind.get("first_miss")), _time(blind.get("last_found_at"))
    stamp = "%Y-%m-%d %H:%M UTC"
    if first is not None:
        when = f"since {first.astimezone(UTC).strftime(stamp)} (" + (
            f"its last finding {last.astimezone(UTC).strftime(stamp)}" if last is not None
            else f"no finding in the last {blind.get('days', 7):g} days") + ")"
    else:
        when = f"in the last {blind.get('days', 7):g} days"
    rate = blind.get("fleet_rate")
    fleet = (f" (other vehicles find such defects on {100 * rate:.0f} % of their passes)"
             if isinstance(rate, int | float) else "")
    return (f"drove past {blind.get('defects')} defects other vehicles found, {misses} times {when}, and reported "
            f"none of them{fleet}: check what the camera sees (`edge-agent doctor` on the box), the windscreen, "
            "the focus and the model")


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _duration(seconds: float) -> str:
    if seconds >= 48 * 3600:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


# The one list of states: the API's (an enum in OpenAPI), `device ls --state`'s and the metric's.
State = Literal["online", "stale", "offline", "stopped", "revoked", "unknown"]
STATES: tuple[str, ...] = get_args(State)


def choices(value: str | None, name: str, allowed: tuple[str, ...]) -> set[str] | None:
    """A comma list of ALLOWED words (the API's `state=`/`problem=`, `device ls --state/--problem`), None when
    not given; ValueError naming NAME and the allowed words otherwise."""
    if value is None:
        return None
    items = {v.strip() for v in value.split(",")}
    if not items or not all(items) or not items <= set(allowed):
        raise ValueError(f"{name} takes a comma list of {', '.join(allowed)}")
    return items


def wanted(row: dict[str, Any], states: set[str] | None, codes: set[str] | None) -> bool:
    """ROW in one of STATES (None: any) with one of the problem CODES (None: any)."""
    return (states is None or row["state"] in states) and (codes is None or bool(codes & set(row["problem_codes"])))


def device_rows(conn: Any, now: datetime, stale_after_s: float, one: str | None = None) -> list[dict[str, Any]]:
    """Every device (or only device ONE) with its state and problems; keys as the API answers them."""
    refused = {r[0]: (int(r[1]), str(r[2])) for r in conn.execute(REJECTED_24H).fetchall()}
    rows = conn.execute(DEVICES, {"one": one}).fetchall()
    out = []
    for dev_id, name, state, last_seen, revoked_at, state_at, status, queue_depth, ahead_s, ahead_at, blind in rows:
        status = status if isinstance(status, dict) else {}
        health = raw if isinstance(raw := status.get("health"), dict) else {}
        out.append({"id": dev_id, "name": name, "state": state_of(state, last_seen, revoked_at, now, stale_after_s),
                    "last_seen": last_seen, "queue_depth": queue_depth,
                    "health": {k: v for k, v in health.items() if k != "broker" and (v is None or isinstance(v, str))},
                    "status_sent_at": status.get("sent_at"), "clock_offset_s": clock_offset_s(status, state_at),
                    "refused_24h": refused.get(dev_id, (0, ""))[0], "last_speed_mps": _speed(status),
                    # A withdrawn box is no one's to fix: its last words led the list and the problem count.
                    **_problem_fields([] if revoked_at is not None else
                                      coded_problems(status, state_at, refused.get(dev_id),
                                                     dated_ahead(ahead_s, ahead_at, now), blind))})
    return out


def _problem_fields(coded: list[tuple[str, str]]) -> dict[str, list[str]]:
    return {"problems": [words for _, words in coded], "problem_codes": [code for code, _ in coded]}


def _speed(status: dict[str, Any]) -> float | None:
    """The vehicle's speed at its last status: a van that went silent standing was likely switched off at
    ignition-off; one that went silent driving lost its power or its network on the road."""
    fix = raw if isinstance(raw := status.get("fix"), dict) else {}
    if fix.get("state") == "stale":  # the filter coasting on its last speed through a GNSS outage
        return None
    speed = fix.get("speed_mps")
    return float(speed) if isinstance(speed, int | float) and not isinstance(speed, bool) else None
