"""Geolocation: boxes on the road plane, vehicle frame to lat/lon, views combined, severity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from calibration.camera import Intrinsics, Mount
from calibration.projector import GroundProjector
from edge_agent.config.events import EventsConfig
from edge_agent.perception.geolocate import Geolocator, GroundBox, severity, vehicle_to_enu
from roadmon_contract.geodesy import distance_m, enu_offset, offset_latlon

LAT0, LON0 = 48.137, 11.575


@dataclass(frozen=True)
class Pose:
    lat: float
    lon: float
    speed_mps: float = 10.0
    heading_deg: float | None = 0.0
    h_std_m: float = 0.5
    segment: int = 0


@pytest.fixture(scope="module")
def projector() -> GroundProjector:
    return GroundProjector(Intrinsics.from_hfov(1280, 720, 90.0), Mount(height_m=1.4, pitch_deg=12.0))


def box_of(projector: GroundProjector, forward: float, left: float, length: float, width: float) -> tuple:
    """The pixel box of a flat rectangle on the road centred at (forward, left)."""
    corners = np.array([[forward + df, left + dl]
                        for df in (-length / 2, length / 2) for dl in (-width / 2, width / 2)])
    uv = projector.ground_to_pixels(corners)
    return float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max())


def test_local_plane_round_trip() -> None:
    lat, lon = offset_latlon(LAT0, LON0, east_m=30.0, north_m=-40.0)
    east, north = enu_offset(LAT0, LON0, lat, lon)
    assert east == pytest.approx(30.0, abs=1e-3) and north == pytest.approx(-40.0, abs=1e-3)
    assert distance_m(LAT0, LON0, lat, lon) == pytest.approx(50.0, abs=1e-2)


@pytest.mark.parametrize(("heading", "forward", "left", "east", "north"), [
    (0, 10, 0, 0, 10),      # north-bound: ahead is north
    (0, 0, 2, -2, 0),       # and left is west
    (90, 10, 0, 10, 0),     # east-bound: ahead is east
    (90, 0, 2, 0, 2),       # and left is north
    (180, 5, 1, 1, -5),
])
def test_vehicle_frame_rotated_by_heading(heading, forward, left, east, north) -> None:
    e, n = vehicle_to_enu(forward, left, heading)
    assert (e, n) == (pytest.approx(east, abs=1e-9), pytest.approx(north, abs=1e-9))


@pytest.mark.parametrize(("forward", "left"), [(6.0, 0.0), (10.0, -1.5), (15.0, 2.0)])
def test_ground_box_recovers_a_flat_defect(projector: GroundProjector, forward: float, left: float) -> None:
    geo = Geolocator(projector)
    box = geo.ground_box(box_of(projector, forward, left, length=0.6, width=0.8))
    assert box is not None
    assert box.forward_m == pytest.approx(forward, abs=0.05)
    assert box.left_m == pytest.approx(left, abs=0.05)
    # Across-track extent from both edges of the box: exact for a rectangle aligned with the road, off-axis too.
    assert box.width_m == pytest.approx(0.8, rel=0.02)
    assert box.length_m == pytest.approx(0.6, rel=0.02)


def test_projection_sigma_grows_with_range_and_far_boxes_are_refused(projector: GroundProjector) -> None:
    geo = Geolocator(projector, max_range_m=25.0)
    sigmas = [geo.ground_box(box_of(projector, f, 0, 0.5, 0.5)).sigma_m for f in (5, 10, 20)]
    assert sigmas[0] < sigmas[1] < sigmas[2]
    assert sigmas[2] > 3 * sigmas[0]
    assert geo.ground_box(box_of(projector, 40, 0, 0.5, 0.5)) is None
    assert geo.ground_box((100, 10, 200, 60)) is None  # above the horizon: not on the road


def test_a_far_edge_beyond_range_measures_no_length(projector: GroundProjector) -> None:
    """A box whose near edge is in range and far edge is not (a roof camera's box from 21 to 33 m became a 6 m
    pothole centred beyond range; one whose top was above the horizon a 0 m one): the view stands on its near
    edge and says nothing of the length; with no view of the far edge the defect is as long as it is wide."""
    geo = Geolocator(projector, max_range_m=12.0)
    far = geo.ground_box(box_of(projector, 13.0, 0.0, length=4.0, width=0.8))  # 11 m to 15 m
    assert far is not None and not far.length_seen and far.length_m == 0.0
    assert far.forward_m == pytest.approx(11.0, abs=0.1)   # its near edge, within range
    assert far.width_m == pytest.approx(0.8, rel=0.05)
    pose = Pose(LAT0, LON0)
    alone = Geolocator.combine([(far, pose, 0.0)])
    assert alone.length_m == pytest.approx(alone.width_m) and alone.length_m > 0.5
    near = geo.ground_box(box_of(projector, 7.0, 0.0, length=0.6, width=0.8))
    assert near.length_seen
    both = Geolocator.combine([(far, pose, 0.0), (near, pose, 0.0)])
    assert both.length_m == pytest.approx(0.6, rel=0.05)   # only the view that saw both edges measures it


def test_views_combine_to_the_true_point(projector: GroundProjector) -> None:
    """A defect 30 m north of the start, seen from a vehicle driving north with exact poses."""
    geo = Geolocator(projector)
    truth = offset_latlon(LAT0, LON0, 3.0, 30.0)  # 3 m east of the lane centre: on the vehicle's right
    views = []
    for driven in np.arange(12.0, 24.0, 1.0):
        pose = Pose(*offset_latlon(LAT0, LON0, 0.0, driven), h_std_m=0.8)
        box = geo.ground_box(box_of(projector, 30.0 - driven, -3.0, 0.5, 0.5))
        views.append((box, pose, 0.0))
    located = Geolocator.combine(views)
    assert distance_m(located.lat, located.lon, *truth) < 0.1
    assert located.h_accuracy_m >= 0.8          # GNSS error does not average out over one pass
    assert located.h_accuracy_m < 1.5
    assert located.width_m == pytest.approx(0.5, rel=0.03) and located.length_m == pytest.approx(0.5, rel=0.03)


def test_combined_views_weight_near_views_more(projector: GroundProjector) -> None:
    """A far view with a pitch error is pulled in by near views rather than averaged half and half."""
    geo = Geolocator(projector)
    near = geo.ground_box(box_of(projector, 6.0, 0.0, 0.5, 0.5))
    far = geo.ground_box(box_of(projector, 22.0, 0.0, 0.5, 0.5))
    pose = Pose(LAT0, LON0, h_std_m=0.0)
    far_pose = Pose(*offset_latlon(LAT0, LON0, 0.0, -16.0 - 4.0), h_std_m=0.0)  # 4 m wrong along track
    located = Geolocator.combine([(near, pose, 0.0), (far, far_pose, 0.0)])
    _east, north = enu_offset(LAT0, LON0, located.lat, located.lon)
    assert north == pytest.approx(6.0, abs=0.5)


def test_severity_formula() -> None:
    cfg = EventsConfig()
    small, big, huge = severity("pothole", 0.2, 0.2, cfg), severity("pothole", 0.5, 0.6, cfg), \
        severity("pothole", 2, 2, cfg)
    assert 0 < small < big < huge == 1.0
    assert severity("pothole", 0.2, 0.2, cfg) == pytest.approx(math.sqrt(0.04 / cfg.severe_area_m2), abs=1e-3)
    assert severity("crack", 0.5, 0.6, cfg) == pytest.approx(0.6 * big, abs=2e-3)
    assert severity("unknown-class", 2, 2, cfg) == cfg.default_class_weight
    assert severity("pothole", 0, 3, cfg) == 0.0
    assert severity("pothole", 3, 0, cfg) == 0.0


@pytest.mark.parametrize(("width", "length", "expected"), [(0.4, 0.9, 0.6), (0.9, 0.4, 0.6), (0.25, 1.0, 0.5),
                                                           (1.0, 0.25, 0.5), (0.2, 1.8, 0.6)])
def test_severity_of_oblong_defects_follows_their_area(width: float, length: float, expected: float) -> None:
    """sqrt(width x length): an oblong defect is as severe as the square of the same area, either way round."""
    assert severity("pothole", width, length, EventsConfig()) == expected
    assert severity("crack", width, length, EventsConfig()) == round(0.6 * expected, 3)
    assert severity("pothole", width, length, EventsConfig(severe_area_m2=4.0)) == round(expected / 2, 3)


def test_default_severity_spreads_typical_potholes_over_the_range() -> None:
    """With the defaults, a small and a large pothole are clearly apart, and the simulator's potholes (their
    measured sizes run ~20 % above the true ones) do not all land at the top of the scale."""
    cfg = EventsConfig()
    small, medium, large = (severity("pothole", s, s, cfg) for s in (0.3, 0.6, 1.0))
    assert small <= 0.35 and large >= 0.95 and large - small >= 0.6, (small, medium, large)
    assert small < medium - 0.2 < large - 0.4
    from edge_agent.lab.sim.paint import pothole_sprite

    rng = np.random.default_rng(0)
    sprites = [pothole_sprite(rng, float(rng.uniform(0.3, 1.2)), 64, kind="dark") for _ in range(200)]
    sev = np.array([severity("pothole", 1.2 * p.width_m, 1.2 * p.length_m, cfg) for p in sprites])
    assert np.mean(sev >= 1.0) < 0.3, "most potholes saturate: the map would be all red"
    assert np.percentile(sev, 10) < 0.45 and np.percentile(sev, 50) < 0.85


def test_boxes_cut_by_the_image_border_are_left_out_of_the_position(projector: GroundProjector) -> None:
    geo = Geolocator(projector)
    whole = geo.ground_box(box_of(projector, 8.0, 0.0, 0.6, 0.6))
    x1, y1, x2, _ = box_of(projector, 3.0, 0.0, 1.0, 0.6)
    cut = geo.ground_box((x1, y1, x2, 719.0))  # the near part is below the picture
    assert not whole.truncated and cut.truncated
    pose = Pose(LAT0, LON0, h_std_m=0.5)
    located = Geolocator.combine([(whole, pose, 0.0), (cut, Pose(*offset_latlon(LAT0, LON0, 0, 5.0)), 0.0)])
    _east, north = enu_offset(LAT0, LON0, located.lat, located.lon)
    assert north == pytest.approx(8.0, abs=0.05)
    alone = Geolocator.combine([(cut, pose, 0.0)])
    assert alone is not None  # better a rough place than none


@pytest.mark.parametrize(("forward", "left"), [(4.0, -2.5), (7.0, 3.0), (12.0, -3.5)])
def test_known_size_defect_off_axis_is_measured_at_its_size(projector: GroundProjector, forward: float,
                                                              left: float) -> None:
    """A 1.0 m (across) x 0.5 m (along) defect to the side: its pixel box is wider than the defect (its near
    corner reaches the outer side, its far corner the inner side), so the box's bottom edge on the road is
    10-40 % too wide; the across-track extent from both edges is the defect's width."""
    geo = Geolocator(projector)
    bbox = box_of(projector, forward, left, length=0.5, width=1.0)
    box = geo.ground_box(bbox)
    bottom = projector.pixels_to_ground(np.array([[bbox[0], bbox[3]], [bbox[2], bbox[3]]]))
    assert float(np.hypot(*(bottom[1] - bottom[0]))) > 1.1  # what the bottom edge says
    assert box.width_m == pytest.approx(1.0, rel=0.02)
    assert box.length_m == pytest.approx(0.5, rel=0.02)


def test_sizes_combine_with_near_views_weighted_more(projector: GroundProjector) -> None:
    """A detector's box is a few pixels too large everywhere: centimetres near the camera, decimetres far away.
    Over a track's views the near ones must decide the size (GNSS error, which weighs the position, must not)."""
    geo = Geolocator(projector)
    views = []
    for forward in (4.0, 5.0, 6.0, 14.0, 16.0, 18.0, 20.0, 22.0):
        x1, y1, x2, y2 = box_of(projector, forward, 0.0, length=0.6, width=0.6)
        box = geo.ground_box((x1 - 3, y1 - 3, x2 + 3, y2 + 3))
        views.append((box, Pose(LAT0, LON0, h_std_m=3.0), 0.0))
    lengths = [v[0].length_m for v in views]
    located = Geolocator.combine(views)
    assert float(np.mean(lengths)) > 3 * 0.6                       # equal weights: three times too long
    assert 0.6 < located.length_m <= max(lengths[:3])              # no worse than the near views' own error
    assert located.width_m == pytest.approx(0.6, rel=0.1)


def ground(sigma: float, size_sigma: float, width: float, length: float, truncated: bool = False) -> GroundBox:
    return GroundBox(forward_m=10.0, left_m=0.0, width_m=width, length_m=length, range_m=9.5, sigma_m=sigma,
                     corners=np.zeros((4, 2)), truncated=truncated, size_sigma_m=size_sigma)


def test_views_combine_with_inverse_variance_weights() -> None:
    """Two views 3 m apart. Position weights 1/(sigma² + h_std²): 1/1.25 = 0.8 and 1/5 = 0.2, so 0.6 m from
    the first; accuracy sqrt(weighted GNSS sigma² + 1/sum(1/sigma²)) = sqrt(1.2² + 1/5); sizes weighted by
    1/size_sigma²: 25 and 6.25."""
    near = (ground(0.5, 0.2, 0.4, 0.6), Pose(LAT0, LON0, h_std_m=1.0), 0.0)
    far = (ground(1.0, 0.4, 0.8, 1.0), Pose(*offset_latlon(LAT0, LON0, 0.0, 3.0), h_std_m=2.0), 0.0)
    located = Geolocator.combine([near, far])
    east, north = enu_offset(LAT0, LON0, located.lat, located.lon)
    assert (east, north) == (pytest.approx(0.0, abs=1e-4), pytest.approx(10.6, abs=1e-4))
    assert located.h_accuracy_m == pytest.approx(math.sqrt(1.2 ** 2 + 0.2), abs=1e-4)
    assert (located.width_m, located.length_m) == (pytest.approx(0.48, abs=1e-4), pytest.approx(0.68, abs=1e-4))


def test_views_cut_by_the_border_count_only_when_there_is_nothing_else() -> None:
    whole = (ground(0.5, 0.2, 0.4, 0.6), Pose(LAT0, LON0, h_std_m=1.0), 0.0)
    cut = (ground(0.1, 0.1, 2.0, 2.0, truncated=True), Pose(*offset_latlon(LAT0, LON0, 0.0, 3.0)), 0.0)
    located = Geolocator.combine([cut, whole])
    assert (located.width_m, located.length_m) == (pytest.approx(0.4), pytest.approx(0.6))
    assert enu_offset(LAT0, LON0, located.lat, located.lon)[1] == pytest.approx(10.0, abs=1e-4)
    alone = Geolocator.combine([cut])
    assert alone.width_m == pytest.approx(2.0) and Geolocator.combine([]) is None


def test_a_box_at_the_image_border_is_truncated(projector: GroundProjector) -> None:
    geo = Geolocator(projector)
    inside = geo.ground_box((600.0, 500.0, 700.0, 560.0))
    assert inside is not None and not inside.truncated
    # within 2 px of the last pixel (1279, 719) or of the first: cut off; 2.5 px away: whole
    for box in ((2.0, 500.0, 100.0, 560.0), (600.0, 500.0, 1277.0, 560.0), (600.0, 500.0, 700.0, 717.0)):
        assert geo.ground_box(box).truncated, box
    for box in ((2.5, 500.0, 100.0, 560.0), (600.0, 500.0, 1276.5, 560.0), (600.0, 500.0, 700.0, 716.5)):
        assert not geo.ground_box(box).truncated, box


def test_a_track_across_a_filter_reset_is_placed_by_the_poses_after_it(projector: GroundProjector) -> None:
    """A defect in view while the receiver's position jumped 11 km (the filter reset on it) was placed from the
    poses of both sides, 90-390 m from either; the filter takes the newer side as the truth."""
    geo = Geolocator(projector)
    box = geo.ground_box(box_of(projector, 8.0, 0.0, length=0.6, width=0.6))
    before = Pose(*offset_latlon(LAT0, LON0, 0.0, -11_000.0), h_std_m=0.4, segment=3)
    after = Pose(LAT0, LON0, h_std_m=2.0, segment=4)
    located = Geolocator.combine([(box, before, 0.0)] * 30 + [(box, after, 0.0)] * 2)
    assert located.segment == 4
    assert distance_m(located.lat, located.lon, *offset_latlon(LAT0, LON0, 0.0, 8.0)) < 0.5
