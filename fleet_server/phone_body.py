"""The deployment guide's SDK body (phones and third-party clients), validated strictly and turned into events.

    {device_id, timestamp, gps: {lat, lon, accuracy}, detections: [{bbox, class, confidence}], image_base64?}

Each element of `detections` becomes one `roadmon.event/1` sighting at the phone's own position: a phone does
not project its boxes onto the road, so the event says `ground_projected: false`, carries no size, and its
position accuracy is the GPS accuracy widened by how far ahead a defect may lie (`api.unprojected_sigma_m`),
which gives it less weight than a vehicle's projected sighting when the aggregator averages positions.

The ids are derived from the body, so a resent submission maps to the same events and is stored once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleet_server.jpeg_strip import without_metadata
from fleet_server.validate import Invalid, as_utc, class_name
from roadmon_contract.ids import DEVICE_ID_PATTERN
from roadmon_contract.times import utc_iso

THUMBNAIL_PX = 640  # longest side of the thumbnail kept from a phone's photo (the agents send ~this size)
THUMBNAIL_MAX_BYTES = 140_000  # base64 of it stays within the event schema's 200,000 characters
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")  # pydantic would read "1796483257" as Unix seconds
# The model fields a sighting must carry; a phone does not say which model it ran.
PHONE_MODEL = {"name": "client-sdk", "version": "unknown", "sha256": "0" * 64}


class _Strict(BaseModel):
    # strict: a number must be a JSON number ("48.1" and true are refused), a string a JSON string.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Gps(_Strict):
    lat: float = Field(ge=-90, le=90, description="Latitude of the phone, degrees (WGS84)")
    lon: float = Field(ge=-180, le=180, description="Longitude of the phone, degrees (WGS84)")
    accuracy: float = Field(ge=0, le=10000, description="Horizontal accuracy of the fix, metres (1 sigma)")

    @model_validator(mode="after")
    def _not_null_island(self) -> Gps:
        if self.lat == 0 and self.lon == 0:
            raise ValueError("(0, 0) is no position (a receiver without a fix)")
        return self


class PhoneDetection(_Strict):
    bbox: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=4, max_length=4)] = Field(
        description="[x1, y1, x2, y2] in image pixels")
    class_: str = Field(alias="class", min_length=1, max_length=64,
                        description="The model's class name, e.g. pothole: letters, digits, spaces, '_', '-' "
                                    "and '.', starting with a letter or digit; stored in lower case")
    confidence: float = Field(ge=0, le=1, description="Detector score")

    @field_validator("class_")
    @classmethod
    def _class_name(cls, name: str) -> str:
        return class_name(name)

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, box: list[float]) -> list[float]:
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError("needs x2 > x1 and y2 > y1")
        return box


class PhoneSubmission(_Strict):
    device_id: str = Field(pattern=DEVICE_ID_PATTERN,
                           description="The submitting device's id (left out: the token's device)")
    timestamp: datetime = Field(strict=False, description="ISO 8601 time of capture, with a zone (Z or +hh:mm)")
    gps: Gps = Field(description="Where the phone was")
    detections: list[PhoneDetection] = Field(min_length=1, max_length=100, description="What it saw in the image")
    image_base64: str | None = Field(None, description="The image as base64 JPEG (optional, size-capped)")

    @field_validator("timestamp", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if not isinstance(value, str) or not ISO_DATE.match(value):  # the guide's clients send ISO 8601 text
            raise ValueError("must be an ISO 8601 string, e.g. 2026-11-28T13:45:32.120Z")
        return value

    @field_validator("timestamp")
    @classmethod
    def _zoned(cls, value: datetime) -> datetime:
        return as_utc(value)  # a ValueError (no zone, out of range) is a 400 naming the field


def is_phone_body(body: dict) -> bool:
    """The guide's shape (rather than a roadmon.event/1): it has `gps` or `detections` and no `schema`."""
    return "schema" not in body and ("gps" in body or "detections" in body)


def parse_submission(body: dict, max_image_bytes: int) -> tuple[PhoneSubmission, bytes | None]:
    """The validated submission and its decoded JPEG; Invalid naming the field otherwise."""
    try:
        sub = PhoneSubmission.model_validate(body)
    except ValidationError as exc:
        raise Invalid("; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                                for e in exc.errors()[:5])) from None
    return sub, _image(sub.image_base64, max_image_bytes)


def _image(text: str | None, max_bytes: int) -> bytes | None:
    """The thumbnail JPEG of a phone's image. The guide's SDKs send the camera's photo as it is (megabytes), so
    the server keeps a THUMBNAIL_PX one, as the agents send, rather than refusing the detections with it."""
    if not text:
        return None
    if len(text) > 4 * math.ceil(max_bytes / 3) + 4:
        raise Invalid(f"image_base64: larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("image_base64: not base64") from None
    if len(data) > max_bytes:
        raise Invalid(f"image_base64: {len(data)} bytes > {max_bytes}")
    return thumbnail(data)


def thumbnail(data: bytes) -> bytes:
    """DATA (JPEG, PNG or WebP) as a JPEG no larger than THUMBNAIL_PX and THUMBNAIL_MAX_BYTES (the event schema's
    thumbnail), never with the camera's metadata (EXIF: where, with which camera, whose); a JPEG within both
    keeps its picture as sent."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG" and max(img.size) <= THUMBNAIL_PX and len(data) <= THUMBNAIL_MAX_BYTES:
                return without_metadata(data)
            if img.format not in ("JPEG", "PNG", "WEBP"):
                raise Invalid(f"image_base64: a {img.format} image; send JPEG, PNG or WebP")
            img.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # a JPEG decodes at 1/2-1/8 scale: fast, little memory
            small = img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise Invalid("image_base64: not an image this server reads (JPEG, PNG or WebP)") from None
    side = THUMBNAIL_PX
    while True:  # a busy photo may need a lower quality, then a smaller size, to fit
        small.thumbnail((side, side))
        for quality in (80, 60, 40):
            out = io.BytesIO()
            small.save(out, "JPEG", quality=quality)
            if out.tell() <= THUMBNAIL_MAX_BYTES or side <= 80:
                return out.getvalue()
        side //= 2


def stable_uuid7(ms: int, key: bytes) -> str:
    """A UUIDv7 with the capture time's milliseconds and bits from KEY: the same body gives the same id."""
    digest = int.from_bytes(hashlib.sha256(key).digest()[:10], "big")
    counter = digest >> 68 & 0xFFF
    rand = digest & ((1 << 62) - 1)
    return str(uuid.UUID(int=(ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand))


def submission_key(body: dict) -> bytes:
    """The body as canonical JSON: key order and spacing do not make a resent body a new submission."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def to_events(sub: PhoneSubmission, image: bytes | None, key: bytes, unprojected_sigma_m: float
              ) -> tuple[str, list[dict]]:
    """(submission id, one roadmon.event/1 per detection)."""
    ms = int(sub.timestamp.timestamp() * 1000)
    submission_id = stable_uuid7(ms, b"submission\0" + key)
    captured = utc_iso(sub.timestamp)
    h = round(math.hypot(sub.gps.accuracy, unprojected_sigma_m), 3)
    phone = {"lat": sub.gps.lat, "lon": sub.gps.lon}
    thumb = base64.b64encode(image).decode("ascii") if image else None
    events = []
    for i, det in enumerate(sub.detections):
        event: dict[str, Any] = {
            "schema": "roadmon.event/1", "event_id": stable_uuid7(ms, b"detection\0%d\0" % i + key),
            "device_id": sub.device_id, "seq": 0, "captured_at": captured, "class": det.class_,
            "confidence": det.confidence, "position": {**phone, "h_accuracy_m": h},
            "vehicle": {**phone, "h_accuracy_m": sub.gps.accuracy, "speed_mps": None, "heading_deg": None},
            "size_m": {"width": 0, "length": 0}, "severity": 0, "frames": 1, "bbox": det.bbox,
            "model": PHONE_MODEL, "ground_projected": False, "submission_id": submission_id,
        }
        if thumb:
            event["thumbnail_jpeg_b64"] = thumb
        events.append(event)
    return submission_id, events
