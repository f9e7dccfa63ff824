"""Message validation on its own (no broker, no database): every rule at its boundary, and the device check.

tests/test_server_ingest.py sends the same kinds of bad messages through a real broker and ingest worker;
here each rule is pinned exactly, so a check that drifts by one is caught without the services.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from fleet_server.config import IngestConfig
from fleet_server.validate import Invalid, check_message, class_name, message_ref, parse_utc
from tests.server_fixtures import iso, make_coverage, make_event

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
CFG = IngestConfig(max_message_bytes=4096, horizon_days=30.0, future_tolerance_s=3600.0)


def check(kind: str, obj: dict | bytes, topic_device: str | None = "veh-1", cfg: IngestConfig = CFG) -> dict:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return check_message(kind, topic_device, raw, NOW, cfg)


def event(**changes) -> dict:
    return make_event("veh-1", 48.1, 11.5, at=NOW - timedelta(minutes=5), **changes)


def coverage(start: datetime = NOW - timedelta(minutes=2), end: datetime = NOW - timedelta(minutes=1),
             line: list[tuple[float, float]] | None = None) -> dict:
    return make_coverage("veh-1", line or [(48.1, 11.5), (48.101, 11.5)], start, end)


def test_a_good_event_and_coverage_record_pass_unchanged() -> None:
    ev, cov = event(), coverage()
    assert check("event", ev) == ev
    assert check("coverage", cov) == cov


@pytest.mark.parametrize("kind", ["event", "coverage"])
def test_a_payload_naming_another_device_than_its_topic_is_refused(kind: str) -> None:
    obj = event() if kind == "event" else coverage()
    with pytest.raises(Invalid, match="device mismatch: topic says 'veh-2', payload says 'veh-1'"):
        check(kind, obj, topic_device="veh-2")
    assert check(kind, obj, topic_device="veh-1") == obj
    assert check(kind, obj, topic_device=None) == obj  # no topic (HTTP upload): the token names the device


def test_the_size_limit_is_exact() -> None:
    ev = event()
    raw = json.dumps(ev).encode()
    padded = raw[:-1] + b" " * (CFG.max_message_bytes - len(raw)) + b"}"
    assert len(padded) == CFG.max_message_bytes
    assert check("event", padded) == ev
    with pytest.raises(Invalid, match=f"too large: {CFG.max_message_bytes + 1} bytes > {CFG.max_message_bytes}"):
        check("event", padded + b" ")


@pytest.mark.parametrize(("raw", "reason"), [
    (b"not json", "not JSON"), (b"\xff\xfe", "not UTF-8"), (b"[1, 2]", "not a JSON object"),
    (b'{"confidence": NaN}', "not finite: NaN"), (b'{"confidence": -Infinity}', "not finite: -Infinity"),
])
def test_what_is_not_a_json_object_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(Invalid, match=reason):
        check("event", raw)


@pytest.mark.parametrize(("old", "new"), [('"bbox": [10, 20, 110, 90]', '"bbox": [10, 20, 1e999, 90]'),
                                          ('"h_accuracy_m": 1.5', '"h_accuracy_m": 1e999')])
def test_an_overflowing_number_is_refused(old: str, new: str) -> None:
    """json reads 1e999 as inf without complaint; PostgreSQL would refuse it later, so it never gets there.
    (The schema validator already refuses inf, even where the schema sets no maximum.)"""
    text = json.dumps(event()).replace(old, new)
    assert "1e999" in text
    with pytest.raises(Invalid, match=r"^(schema|not finite)"):
        check("event", text.encode())


@pytest.mark.parametrize(("lat", "lon", "ok"), [
    (90.0, 180.0, True), (-90.0, -180.0, True), (0.0, 0.5, True), (0.5, 0.0, True),
    (0.0, 0.0, False),
])
def test_positions_at_the_limits(lat: float, lon: float, ok: bool) -> None:
    ev = make_event("veh-1", lat, lon, at=NOW - timedelta(minutes=5))
    ev["vehicle"]["lat"] = 48.0  # the vehicle is checked on its own below
    if ok:
        assert check("event", ev) == ev
    else:
        with pytest.raises(Invalid, match=r"position: \(0, 0\) is no position"):
            check("event", ev)


def test_a_vehicle_at_0_0_is_refused_too() -> None:
    ev = event()
    ev["vehicle"]["lat"], ev["vehicle"]["lon"] = 0.0, 0.0
    with pytest.raises(Invalid, match=r"vehicle: \(0, 0\)"):
        check("event", ev)


def test_the_time_window_is_exact() -> None:
    tolerance, horizon = timedelta(seconds=CFG.future_tolerance_s), timedelta(days=CFG.horizon_days)
    assert check("event", event(captured_at=iso(NOW + tolerance)))
    with pytest.raises(Invalid, match="is in the future"):
        check("event", event(captured_at=iso(NOW + tolerance + timedelta(milliseconds=1))))
    assert check("event", event(captured_at=iso(NOW - horizon)))
    with pytest.raises(Invalid, match="older than 30 days"):
        check("event", event(captured_at=iso(NOW - horizon - timedelta(milliseconds=1))))


def test_coverage_must_not_end_before_it_starts_and_its_line_is_checked() -> None:
    at = NOW - timedelta(minutes=1)
    assert check("coverage", coverage(at, at))
    with pytest.raises(Invalid, match="ended_at is before started_at"):
        check("coverage", coverage(at, at - timedelta(milliseconds=1)))
    with pytest.raises(Invalid, match=r"line/1: \(0, 0\)"):
        check("coverage", coverage(line=[(48.1, 11.5), (0.0, 0.0)]))
    with pytest.raises(Invalid, match=r"started_at: .* is in the future"):
        check("coverage", coverage(NOW + timedelta(hours=2), NOW + timedelta(hours=3)))


def test_a_thumbnail_must_be_base64() -> None:
    assert check("event", event(thumbnail_jpeg_b64="/9j/2Q=="))  # FF D8 FF ... FF D9
    with pytest.raises(Invalid, match="thumbnail_jpeg_b64: not base64"):
        check("event", event(thumbnail_jpeg_b64="not base64!"))
    html = base64.b64encode(b"<html><script>alert(document.domain)</script></html>").decode()
    with pytest.raises(Invalid, match="thumbnail_jpeg_b64: not a JPEG image"):
        check("event", event(thumbnail_jpeg_b64=html))
    behind_a_marker = base64.b64encode(b"\xff\xd8\xff<html><script>alert(1)</script></html>").decode()
    with pytest.raises(Invalid, match="thumbnail_jpeg_b64: not a JPEG image"):
        check("event", event(thumbnail_jpeg_b64=behind_a_marker))


def test_unknown_kinds_and_schema_errors_say_why() -> None:
    with pytest.raises(Invalid, match="unknown message kind 'cmd'"):
        check("cmd", event())
    bad = event()
    del bad["confidence"]
    with pytest.raises(Invalid, match=r"^schema: .*confidence"):
        check("event", bad)


def test_times_need_a_zone() -> None:
    assert parse_utc("2026-11-28T12:00:00.000Z") == NOW
    assert parse_utc("2026-11-28T13:00:00+01:00") == NOW
    with pytest.raises(Invalid, match="time without zone"):
        parse_utc("2026-11-28T12:00:00")


def test_times_are_read_as_rfc_3339_writes_them_and_never_raise_anything_but_invalid() -> None:
    assert parse_utc("2026-11-28t12:00:00z") == NOW  # RFC 3339 allows lower case
    assert parse_utc("2026-11-28T11:59:60Z") == NOW  # a leap second: the next minute's first, as PostgreSQL says
    for text in ("2026-11-28T25:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:60Z", "yesterday"):
        with pytest.raises(Invalid):
            parse_utc(text)
    # Through the checks of a message (the contract asks for UTC: Z or z, no offset), the field is named.
    assert check("event", event(captured_at="2026-11-28t11:55:00.000Z"))
    assert check("event", event(captured_at="2026-11-28t11:55:00.000z"))
    assert check("coverage", {**coverage(), "started_at": "2026-11-28t11:58:00z"})
    with pytest.raises(Invalid, match=r"^captured_at: .* is in the future"):
        check("event", event(captured_at="2026-11-28T23:59:60Z"))
    with pytest.raises(Invalid, match=r"^schema: captured_at: .*does not match"):
        check("event", event(captured_at="2026-11-28T12:55:00.000+01:00"))
    for unreadable in ("2026-13-45T00:00:00Z", "2026-11-28 11:55:00Z", "2026-11-28Z"):
        with pytest.raises(Invalid, match=r"^schema: captured_at: .*date-time"):
            check("event", event(captured_at=unreadable))


def test_class_names_are_folded_and_bounded() -> None:
    assert class_name(" Pothole ") == "pothole"
    assert class_name("Alligator \t Crack") == "alligator crack"
    assert class_name("D00") == "d00" and class_name("Schlagloch") == "schlagloch"
    # Any name the model gives is taken (the contract leaves the set to the model); the message is unchanged,
    # the sighting's class is stored folded.
    assert check("event", event(cls="Elephant"))["class"] == "Elephant"
    for bad in ("\U0001f418", '=HYPERLINK("http://x")', "@SUM(1)", "-1", "+1", "a\x01b", " ", "x" * 65):
        with pytest.raises(Invalid, match="class: "):
            check("event", event(cls=bad))


def test_message_ref_finds_the_id_to_tell_the_device() -> None:
    ev, cov = event(), coverage()
    assert message_ref(json.dumps(ev).encode()) == ev["event_id"]
    assert message_ref(json.dumps(cov).encode()) == cov["coverage_id"]
    assert message_ref(b'{"event_id": "' + b"x" * 64 + b'"}') == "x" * 64
    for raw in (b"not json", b"[1]", b'{"event_id": 5}', b'{"event_id": ""}', b'{"event_id": "' + b"x" * 65 + b'"}'):
        assert message_ref(raw) is None, raw
