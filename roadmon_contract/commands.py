"""The envelope of every server -> device command (`roadmon/v1/<id>/cmd/<name>`): the fleet server stamps a
`command_id` (the device echoes it in its result), `issued_at` and `expires_at` (RFC 3339, UTC). A device must
not act on a command past its `expires_at`: the broker keeps QoS 1 commands for a vehicle that is off, and a
week-old one would otherwise still be carried out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from roadmon_contract.times import utc_iso


def expires_at(payload: dict[str, Any]) -> datetime | None:
    """The command's expiry, None when it has none (an older server); ValueError when it is not a time."""
    value = payload.get("expires_at")
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expires_at must be an RFC 3339 time")
    when = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# Results after which a command is still to be answered (a model update waiting in a queue): the final one follows.
# The box re-sends final results until acked; the server's `cmd results` shows both. Per command: a resend's
# "queued" (its rows queued again) is its final answer, and as an interim one it was never sent again, so a box
# that answered while no ingest worker was connected was listed by `cmd summary` as never answering.
INTERIM = {"model-update": ("queued",)}


def is_interim(name: str, result: Any) -> bool:
    return isinstance(result, dict) and result.get("status") in INTERIM.get(name, ())


def zoned_time(text: Any) -> datetime:
    """TEXT as an RFC 3339 time with its zone (a command's `since`, which a box compares with its own UTC stamps);
    ValueError saying what is wrong."""
    try:
        when = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time (2026-12-06T02:00:00Z)") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no zone; an RFC 3339 time needs a zone (Z or +hh:mm)")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is past year 9999 in UTC
        raise ValueError(f"{text!r} is out of range") from None


def expired_reason(payload: dict[str, Any], now: datetime | None = None) -> str | None:
    """Why the command in PAYLOAD must no longer be carried out, or None; ValueError for an unreadable
    expires_at."""
    expiry = expires_at(payload)
    now = now or datetime.now(UTC)
    if expiry is not None and expiry <= now:
        # The box's clock said so: one a day ahead called every fresh command expired, and nothing said whose clock.
        return (f"the command expired at {payload['expires_at']} (issued {payload.get('issued_at', '?')}) by this "
                f"box's clock, which says {utc_iso(now, 'seconds')}")
    return None
