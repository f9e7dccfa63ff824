"""Pictures keep no camera metadata: a phone's photo carried its EXIF position, body serial number and owner's name
to every viewer of the map (a data-protection review). Stripped without decoding, on every way a picture comes in:
a phone's image, an event's thumbnail over HTTP and over MQTT."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fleet_server.api import create_app
from fleet_server.jpeg_strip import without_metadata
from tests.server_fixtures import DeviceClient, count, make_cfg, make_event, token, wait_for, workers

__all__ = ["make_cfg", "workers"]

SECRETS = (b"Alice Smith", b"SERIAL-XYZ-987654", b"owner note", b"appended preview")


def tagged_jpeg(progressive: bool = False) -> tuple[bytes, np.ndarray]:
    """A 400x300 photo with EXIF GPS, a serial and an owner, a comment, and a picture appended after its end (as
    phones append depth and gain maps); and its pixels."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), np.uint8))
    exif = Image.Exif()
    exif[0x013B] = "Alice Smith"  # Artist
    exif[0x0110] = "iPhone 15"  # Model
    exif.get_ifd(0x8769)[0xA431] = "SERIAL-XYZ-987654"  # BodySerialNumber
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 22.0, 11.5), 3: "E", 4: (4.0, 53.0, 22.2)})  # GPS
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif.tobytes(), comment=b"owner note", progressive=progressive, quality=90)
    data = out.getvalue()
    assert all(s in data for s in SECRETS[:3])
    return data + b"\xff\xd8appended preview\xff\xd9", np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_clean(jpeg: bytes, pixels: np.ndarray) -> None:
    assert not any(s in jpeg for s in SECRETS), "camera metadata left in the picture"
    img = Image.open(io.BytesIO(jpeg))
    assert not dict(img.getexif()) and "comment" not in img.info
    assert np.array_equal(np.asarray(img.convert("RGB")), pixels), "the picture itself changed"


@pytest.mark.parametrize("progressive", [False, True])
def test_metadata_goes_and_the_picture_stays_byte_for_byte(progressive: bool) -> None:
    data, pixels = tagged_jpeg(progressive)
    assert_clean(without_metadata(data), pixels)
    clean = without_metadata(data)
    assert without_metadata(clean) == clean  # nothing more to take
    for junk in (b"", b"\xff\xd8", b"not a jpeg", data[:40]):  # left for the callers' checks to refuse
        assert without_metadata(junk) == junk


@pytest.mark.services
def test_no_way_in_keeps_the_metadata(make_cfg, workers, mqtt_device, service_info) -> None:
    data, pixels = tagged_jpeg()
    device, password = mqtt_device()
    cfg = make_cfg(devices=[device], api={"token_cache_s": 0})
    dsn = cfg.database.resolve_dsn()
    workers(cfg)
    with TestClient(create_app(cfg)) as client:
        phone = {"Authorization": f"Bearer {token(dsn, 'device', 'phone-exif', device_id='phone-exif')}"}
        viewer = {"Authorization": f"Bearer {token(dsn, 'viewer')}"}
        b64 = base64.b64encode(data).decode()
        posted = client.post("/v1/detections", headers=phone, json={
            "timestamp": make_event("x", 0, 0)["captured_at"], "gps": {"lat": 48.1, "lon": 11.5, "accuracy": 4.0},
            "detections": [{"bbox": [1, 2, 30, 40], "class": "pothole", "confidence": 0.9}], "image_base64": b64})
        assert posted.status_code == 202, posted.text
        ours = make_event("phone-exif", 48.2, 11.5, thumbnail_jpeg_b64=b64)
        assert client.post("/api/v1/detections", headers=phone, json=ours).status_code == 202
        box = DeviceClient(service_info.mqtt_host, service_info.mqtt_port, device, password)
        try:
            sent = make_event(device, 48.3, 11.5, thumbnail_jpeg_b64=b64)
            box.publish("event", sent)
            assert wait_for(lambda: sent["event_id"] in box.acked_events(), 30)
        finally:
            box.close()
        for event_id in (posted.json()["event_ids"][0], ours["event_id"], sent["event_id"]):
            served = client.get(f"/api/v1/sightings/{event_id}/thumbnail.jpg", headers=viewer)
            assert served.status_code == 200
            assert_clean(served.content, pixels)
    # Nor is it kept anywhere else: the stored payloads hold no thumbnail, and no column the metadata.
    assert count(dsn, "SELECT count(*) FROM sightings WHERE position('SERIAL-XYZ'::bytea IN thumbnail) > 0 "
                      "OR payload::text LIKE '%%thumbnail_jpeg_b64%%'") == 0
