"""Checks every incoming message: size, JSON, schema, ranges, time window, and that the device agrees.

A message that fails becomes a `Rejection` (stored with its raw bytes in the `rejected` table), never an
exception: the ingest loop must keep running whatever a device sends.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import jsonschema_rs

from fleet_server.config import IngestConfig
from fleet_server.jpeg_strip import without_metadata
from roadmon_contract import validate as contract
from roadmon_contract.decode import Invalid, Limits, decode_json

KINDS = ("event", "coverage", "status")


@dataclass(frozen=True)
class Rejection:
    source: str
    topic: str | None
    device_id: str | None
    reason: str
    raw: bytes
    ref: str | None = None  # the event_id / coverage_id, when the message had a readable one


# The id of an event or coverage record, found without parsing: a rejected message may be too deep or too big
# to parse twice, and its id is only used to tell its own device which message was refused.
_REF = re.compile(rb'"(?:event_id|coverage_id)"\s*:\s*"([0-9A-Za-z-]{1,64})"')


def message_ref(raw: bytes) -> str | None:
    """The event_id or coverage_id of a raw message, if it has a readable one (for telling the device)."""
    found = _REF.search(raw)
    return found.group(1).decode() if found else None


def parse_json(raw: bytes, max_bytes: int) -> Any:
    """RAW through the bounded decoder (size, nesting, number length, NUL, UTF-8); Invalid otherwise."""
    return decode_json(raw, Limits(max_bytes=max_bytes))


def as_utc(value: datetime, naive_is_utc: bool = False, leap_second: bool = False) -> datetime:
    """VALUE (plus a second for LEAP_SECOND) in UTC. Invalid (a ValueError, so pydantic validators may use it
    too) when it has no zone and NAIVE_IS_UTC is false, or when it lies outside the years 1-9999 once in UTC
    (Python cannot hold it, and PostgreSQL would refuse it)."""
    if value.tzinfo is None:
        if not naive_is_utc:
            raise Invalid("time without zone: add Z or an offset")
        value = value.replace(tzinfo=UTC)
    try:
        return (value + timedelta(seconds=1 if leap_second else 0)).astimezone(UTC)
    except OverflowError:
        raise Invalid("time out of range: before the year 1 or after 9999 in UTC") from None


# The seconds of a leap second (23:59:60), which RFC 3339 allows and Python's datetime cannot hold.
_LEAP_SECOND = re.compile(r"(?<=T\d\d:\d\d:)60")


def parse_utc(text: str) -> datetime:
    """An RFC 3339 time in UTC; Invalid, never another exception, when it is not one. RFC 3339 allows a
    lowercase `t` and `z`, which fromisoformat does not take, and a leap second, which is read as the next
    minute's first second (as PostgreSQL reads it)."""
    upper = text.upper()
    leap = _LEAP_SECOND.search(upper)
    try:
        value = datetime.fromisoformat(_LEAP_SECOND.sub("59", upper, count=1) if leap else upper)
    except ValueError:
        raise Invalid(f"not an RFC 3339 time: {text[:40]!r}") from None
    if value.tzinfo is None:
        raise Invalid(f"time without zone: {text[:40]}")
    return as_utc(value, leap_second=leap is not None)


# A defect class as stored: what the model calls it, folded to one spelling (lower case, single spaces), so that
# "Pothole" and "pothole " are one class. The contract leaves the set to the model (a pushed model may bring new
# classes), so any name is taken that starts with a letter or digit and goes on with letters, digits, spaces,
# "_", "-" and "."; at most 64 characters. Emoji, control characters and formula starts (=, +, -, @) are refused.
_CLASS_NAME = re.compile(r"\w[\w .-]{0,63}")


def fold_class(name: str) -> str:
    """NAME in the one spelling classes are stored and looked up under (lower case, single spaces)."""
    return " ".join(name.split()).lower()


def class_name(name: str) -> str:
    """NAME folded (fold_class), when it is a class name; Invalid saying why otherwise."""
    folded = fold_class(name)
    if not _CLASS_NAME.fullmatch(folded):
        raise Invalid(f"{name[:40]!r} is not a class name (1-64 letters, digits, spaces, '_', '-' or '.', "
                      "starting with a letter or digit)")
    return folded


def _check_point(where: str, point: dict) -> None:
    lat, lon = point["lat"], point["lon"]
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise Invalid(f"{where}: not finite")
    if abs(lat) > 90 or abs(lon) > 180:
        raise Invalid(f"{where}: out of range ({lat}, {lon})")
    if lat == 0 and lon == 0:
        raise Invalid(f"{where}: (0, 0) is no position (a receiver without a fix)")


def check_window(where: str, value: datetime, now: datetime, cfg: IngestConfig) -> datetime:
    """VALUE (UTC) when it lies within the accepted window around NOW; Invalid naming WHERE otherwise."""
    if value > now + timedelta(seconds=cfg.future_tolerance_s):
        raise Invalid(f"{where}: {value.isoformat()} is in the future")
    if value < now - timedelta(days=cfg.horizon_days):
        raise Invalid(f"{where}: {value.isoformat()} is older than {cfg.horizon_days:g} days")
    return value


def _check_time(where: str, text: str, now: datetime, cfg: IngestConfig) -> datetime:
    try:
        value = parse_utc(text)
    except Invalid as exc:
        raise Invalid(f"{where}: {exc}") from None
    return check_window(where, value, now, cfg)


@cache
def _fast_validator(kind: str) -> Any:
    return jsonschema_rs.validator_for(contract.schema(kind), validate_formats=True)


def check_schema(kind: str, obj: Any) -> None:
    # The Rust validator answers yes/no ~100x faster; the contract's own validator then words the reasons.
    if _fast_validator(kind).is_valid(obj):
        return
    # The contract's validator has no date-time checker (that needs an extra package), so a time the Rust one
    # refuses is worded from the Rust one's own errors.
    problems = contract.errors(kind, obj) or [
        f"{'/'.join(str(p) for p in e.instance_path) or '(root)'}: {e.message}"
        for e in _fast_validator(kind).iter_errors(obj)]
    raise Invalid("schema: " + "; ".join(problems[:5]))


def _all_finite(value: Any) -> bool:
    # json turns 1e999 into inf without complaint; PostgreSQL would refuse it later.
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    return True


def check_event(obj: dict, now: datetime, cfg: IngestConfig) -> None:
    check_schema("event", obj)
    if not _all_finite(obj):
        raise Invalid("not finite: a number overflows")
    try:
        class_name(obj["class"])  # stored folded (store.INSERT_EVENTS); the payload keeps what the device sent
    except Invalid as exc:
        raise Invalid(f"class: {exc}") from None
    _check_point("position", obj["position"])
    _check_point("vehicle", obj["vehicle"])
    _check_time("captured_at", obj["captured_at"], now, cfg)
    thumb = obj.get("thumbnail_jpeg_b64")
    if thumb:
        try:
            jpeg = base64.b64decode(thumb, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("thumbnail_jpeg_b64: not base64") from None
        # Served as image/jpeg to the dashboard: only a JPEG may be (its start and end markers; decoding every
        # thumbnail at ingest would cost more than storing the event).
        if not jpeg.startswith(b"\xff\xd8\xff") or not jpeg.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise Invalid("thumbnail_jpeg_b64: not a JPEG image (it must start with FF D8 FF and end with FF D9)")


def drop_camera_metadata(event: dict) -> bool:
    """Takes EXIF (a position, a serial number, an owner's name), comments and appended pictures out of a checked
    EVENT's thumbnail; True when it had any. The agent's own crops have none; another client's may."""
    thumb = event.get("thumbnail_jpeg_b64")
    if not thumb:
        return False
    jpeg = base64.b64decode(thumb)
    clean = without_metadata(jpeg)
    if clean == jpeg:
        return False
    event["thumbnail_jpeg_b64"] = base64.b64encode(clean).decode("ascii")
    return True


def check_coverage(obj: dict, now: datetime, cfg: IngestConfig) -> None:
    check_schema("coverage", obj)
    for i, (lon, lat) in enumerate(obj["line"]):
        _check_point(f"line/{i}", {"lat": lat, "lon": lon})
    start = _check_time("started_at", obj["started_at"], now, cfg)
    end = _check_time("ended_at", obj["ended_at"], now, cfg)
    if end < start:
        raise Invalid("ended_at is before started_at")


def check_status(obj: dict) -> None:
    check_schema("status", obj)


def check_message(kind: str, topic_device: str | None, raw: bytes, now: datetime, cfg: IngestConfig) -> dict:
    """The parsed message when it may be stored; raises Invalid with the reason otherwise."""
    if kind not in KINDS:
        raise Invalid(f"unknown message kind {kind!r}")
    obj = parse_json(raw, cfg.max_message_bytes)
    if not isinstance(obj, dict):
        raise Invalid("schema: (root): not a JSON object")
    if kind == "event":
        check_event(obj, now, cfg)
    elif kind == "coverage":
        check_coverage(obj, now, cfg)
    else:
        check_status(obj)
    payload_device = obj.get("device_id")
    if topic_device is not None and payload_device is not None and payload_device != topic_device:
        raise Invalid(f"device mismatch: topic says {topic_device!r}, payload says {payload_device!r}")
    return obj
