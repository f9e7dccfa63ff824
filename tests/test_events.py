"""Events and coverage records follow the wire schemas; thumbnails are small crops; full frames only on request."""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import cv2
import numpy as np
import pytest

from calibration.camera import Intrinsics, Mount
from calibration.projector import GroundProjector
from edge_agent.config.events import EventsConfig
from edge_agent.config.tracker import TrackerConfig
from edge_agent.gnss.motion import Motion
from edge_agent.perception.coverage import CoverageRecorder, footprint_summary
from edge_agent.perception.events import ModelRef, build_event, jpeg_b64
from edge_agent.perception.geolocate import Geolocator, Located, severity
from edge_agent.perception.tracker import Tracker
from roadmon_contract.geodesy import distance_m, offset_latlon
from roadmon_contract.times import utc_iso
from roadmon_contract.validate import errors
from tests.detections import Det

W, H = 1280, 720
MODEL = ModelRef(name="roadmon-pothole", version="1.0.0", sha256="ab" * 32)
T0 = datetime(2026, 11, 28, 13, 45, 32, 120000, tzinfo=UTC)


@dataclass(frozen=True)
class Pose:
    lat: float
    lon: float
    speed_mps: float | None = 11.0
    heading_deg: float | None = 359.99
    h_std_m: float = 1.2
    state: str = "ok"
    t_mono: float = 0.0
    segment: int = 0


@pytest.fixture(scope="module")
def projector() -> GroundProjector:
    return GroundProjector(Intrinsics.from_hfov(W, H, 90.0), Mount(height_m=1.4, pitch_deg=12.0))


def finished_track(projector: GroundProjector, keep_full_frame: bool = False, pose: Pose | None = None,
                   scores: tuple[float, ...] = (0.6, 0.7, 0.95, 0.8, 0.7, 0.6)):
    """A track of one defect seen in 6 frames of a textured image, the best frame in the middle."""
    tracker = Tracker(TrackerConfig(min_frames=3), Geolocator(projector), thumbnail_px=160,
                      keep_full_frame=keep_full_frame)
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    pose = pose or Pose(48.1, 11.5)
    for k, score in enumerate(scores):
        y = 450 + 8 * k
        tracker.step(k / 15, [Det(600, y, 720, y + 40, score)], Motion(0.0, 0.0), image=image, pose=pose,
                     heading_deg=pose.heading_deg, utc=T0 + timedelta(seconds=k / 15))
    (track,) = tracker.flush()
    return track


def test_event_follows_the_schema(projector: GroundProjector) -> None:
    track = finished_track(projector)
    located = Located(lat=48.10012, lon=11.50003, h_accuracy_m=1.9, width_m=0.7, length_m=0.4)
    event = build_event(track, located, device_id="veh-042", seq=17, model=MODEL, captured_at=track.best.utc,
                        cfg=EventsConfig())
    assert errors("event", event) == []
    assert event["captured_at"] == "2026-11-28T13:45:32.253Z"   # the best frame (score 0.95, frame 2)
    assert event["bbox"] == [600.0, 466.0, 720.0, 506.0]
    assert event["frames"] == 6 and event["seq"] == 17
    assert event["confidence"] == pytest.approx(0.7)            # the track's median, not the best frame's 0.95
    assert event["event_id"][14] == "7"                          # UUIDv7
    assert event["vehicle"]["heading_deg"] in (0.0, 360.0)       # 359.99 rounds within the schema's range
    assert "frame_jpeg_b64" not in event                         # privacy: no full frame unless configured
    assert 0 < event["severity"] <= 1


def test_thumbnail_is_a_small_crop_of_the_defect(projector: GroundProjector) -> None:
    track = finished_track(projector)
    located = Located(48.1, 11.5, 2.0, 0.7, 0.4)
    event = build_event(track, located, device_id="veh-042", seq=1, model=MODEL, captured_at=T0,
                        cfg=EventsConfig(thumbnail_max_px=96))
    jpeg = base64.b64decode(event["thumbnail_jpeg_b64"])
    assert jpeg[:2] == b"\xff\xd8"
    thumb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert max(thumb.shape[:2]) <= 96
    # the crop's aspect is the box's (120 x 40 plus margins), not the frame's
    assert thumb.shape[1] / thumb.shape[0] == pytest.approx(120 / 40, rel=0.2)
    assert len(jpeg) < 20_000
    no_thumb = build_event(track, located, device_id="veh-042", seq=2, model=MODEL, captured_at=T0,
                           cfg=EventsConfig(thumbnail=False))
    assert "thumbnail_jpeg_b64" not in no_thumb and errors("event", no_thumb) == []


def test_full_frame_only_when_configured(projector: GroundProjector) -> None:
    track = finished_track(projector, keep_full_frame=True)
    event = build_event(track, Located(48.1, 11.5, 2.0, 0.7, 0.4), device_id="veh-042", seq=3, model=MODEL,
                        captured_at=T0, cfg=EventsConfig(full_frame=True, full_frame_max_px=640))
    assert errors("event", event) == []
    frame = cv2.imdecode(np.frombuffer(base64.b64decode(event["frame_jpeg_b64"]), np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape[:2] == (360, 640)


def test_utc_iso_is_milliseconds_with_z_truncated() -> None:
    assert utc_iso(datetime(2026, 1, 2, 3, 4, 5, 678999, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"
    assert utc_iso(datetime(2026, 1, 2, 4, 4, 5, 999999, tzinfo=timezone(timedelta(hours=1))), "seconds") == \
        "2026-01-02T03:04:05Z"


def test_coverage_records_follow_the_schema_and_split_on_detector_state(projector: GroundProjector) -> None:
    records: list[dict] = []
    footprint = footprint_summary(projector.footprint(20.0))
    rec = CoverageRecorder("veh-042", EventsConfig(coverage_point_s=2.0, coverage_record_s=20.0), records.append,
                           MODEL.sha256, footprint)
    for k in range(0, 600):             # 60 s at 10 Hz, 10 m/s north; detector down from 30 s to 40 s
        t = k / 10
        lat, lon = offset_latlon(48.1, 11.5, 0.0, 10.0 * t)
        rec.update(t, T0 + timedelta(seconds=t), Pose(lat, lon), detector_active=not 30 <= t < 40)
    rec.flush()
    assert all(errors("coverage", r) == [] for r in records), [errors("coverage", r) for r in records]
    assert [r["detector_active"] for r in records] == [True, True, False, True]  # 20 s, 10 s, 10 s, 20 s
    assert all(len(r["line"]) >= 2 for r in records)
    # consecutive records share their joint so the driven line has no holes
    for a, b in itertools.pairwise(records):
        assert a["line"][-1] == b["line"][0]
    assert records[0]["footprint_m"]["far"] == pytest.approx(20.0, abs=0.5)
    assert records[0]["model_sha256"] == MODEL.sha256


def test_coverage_stops_at_a_gap_in_position() -> None:
    records: list[dict] = []
    rec = CoverageRecorder("veh-042", EventsConfig(coverage_point_s=1.0), records.append, None)
    for k in range(30):
        lat, lon = offset_latlon(48.1, 11.5, 0.0, 10.0 * k)
        pose = None if 10 <= k < 15 else Pose(lat, lon)
        rec.update(float(k), T0 + timedelta(seconds=k), pose, detector_active=True)
    rec.flush()
    assert len(records) == 2
    assert len(records[0]["line"]) == 10 and len(records[1]["line"]) == 15
    assert all(errors("coverage", r) == [] for r in records)


def test_coverage_stops_at_a_jump_of_the_position() -> None:
    """A filter reset on a jump of the receiver's position drew an 11 km straight line, detector on, across it:
    road nobody drove, taken by the server as looked at."""
    records: list[dict] = []
    rec = CoverageRecorder("veh-042", EventsConfig(coverage_point_s=1.0), records.append, None)
    for k in range(30):
        lat, lon = offset_latlon(48.1, 11.5, 0.0, 10.0 * k + (11_000.0 if k >= 12 else 0.0))
        rec.update(float(k), T0 + timedelta(seconds=k), Pose(lat, lon, segment=int(k >= 12)),
                   detector_active=True)
    rec.flush()
    assert [len(r["line"]) for r in records] == [12, 18]
    longest = max(distance_m(a[1], a[0], b[1], b[0]) for r in records for a, b in itertools.pairwise(r["line"]))
    assert longest < 11.0


def test_event_numbers_are_rounded_and_clamped_to_the_contract(projector: GroundProjector) -> None:
    track = finished_track(projector, pose=Pose(48.1234567891, 11.9876543219, speed_mps=123.456, h_std_m=-2.0),
                           scores=(0.61234, 0.71234, 0.91234))
    huge = Located(lat=48.123456789, lon=11.987654321, h_accuracy_m=12345.678, width_m=60.0, length_m=-1.0)
    event = build_event(track, huge, device_id="veh-042", seq=1, model=MODEL, captured_at=T0, cfg=EventsConfig())
    assert errors("event", event) == []
    assert event["position"] == {"lat": 48.1234568, "lon": 11.9876543, "h_accuracy_m": 10000.0}
    assert event["size_m"] == {"width": 50.0, "length": 0.0}
    assert event["confidence"] == 0.712
    assert event["vehicle"] == {"lat": 48.1234568, "lon": 11.9876543, "h_accuracy_m": 0.0, "speed_mps": 100.0,
                                "heading_deg": 360.0}
    small = Located(lat=48.1, lon=11.5, h_accuracy_m=-3.0, width_m=0.123456, length_m=49.999)
    event = build_event(track, small, device_id="veh-042", seq=2, model=MODEL, captured_at=T0, cfg=EventsConfig())
    assert event["position"]["h_accuracy_m"] == 0.0
    assert event["size_m"] == {"width": 0.12, "length": 50.0}
    assert event["severity"] == severity("pothole", 0.123456, 49.999, EventsConfig())


def test_a_vehicle_without_speed_says_so_and_one_without_a_position_is_an_error(projector: GroundProjector) -> None:
    located = Located(48.1, 11.5, 2.0, 0.5, 0.5)
    still = finished_track(projector, pose=Pose(48.1, 11.5, speed_mps=None, heading_deg=None))
    event = build_event(still, located, device_id="veh-042", seq=1, model=MODEL, captured_at=T0, cfg=EventsConfig())
    assert (event["vehicle"]["speed_mps"], event["vehicle"]["heading_deg"]) == (None, None)
    assert errors("event", event) == []
    nowhere = Pose(None, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no vehicle position"):
        build_event(still, located, device_id="veh-042", seq=1, model=MODEL, captured_at=T0, cfg=EventsConfig(),
                    vehicle_pose=nowhere)
    with pytest.raises(ValueError, match="no vehicle position"):
        build_event(finished_track(projector, pose=nowhere), located, device_id="veh-042", seq=1, model=MODEL,
                    captured_at=T0, cfg=EventsConfig())


def test_small_images_are_not_scaled_up_and_large_ones_fit() -> None:
    image = np.random.default_rng(1).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    small = cv2.imdecode(np.frombuffer(base64.b64decode(jpeg_b64(image, 90, max_px=96)), np.uint8),
                         cv2.IMREAD_COLOR)
    assert small.shape == (30, 50, 3)
    fitted = cv2.imdecode(np.frombuffer(base64.b64decode(jpeg_b64(image, 90, max_px=25)), np.uint8),
                          cv2.IMREAD_COLOR)
    assert fitted.shape == (15, 25, 3)


def test_model_refs_are_values() -> None:
    import dataclasses

    ref = ModelRef.of(ModelRef(name="m", version="2", sha256="AB" * 32))
    assert ref == ModelRef("m", "2", "ab" * 32) and hash(ref) == hash(ModelRef("m", "2", "ab" * 32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.name = "x"  # type: ignore[misc]
