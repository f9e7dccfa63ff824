"""Cracks on the server, on a real PostGIS: sightings that say their orientation are lines, merged along the
line, so the pieces of a long crack seen over two passes are one defect with one line (issue 11)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleet_server.api_defects import DEFECT_COLUMNS, defect_feature, export_feature
from roadmon_contract.geodesy import enu_offset
from tests.server_fixtures import make_cfg, make_event, offset
from tests.test_server_aggregate import BASE, metres, store

pytestmark = pytest.mark.services  # every test here runs against the local PostGIS/Mosquitto

__all__ = ["make_cfg"]


def crack_pieces(start: tuple[float, float], length_m: float, pieces: int, rng: random.Random, device: str,
                 at: datetime, oriented: bool = True, noise_m: float = 1.5) -> list[dict]:
    """A crack running north from START seen as PIECES sightings along it, each off by NOISE_M (per axis)."""
    piece = length_m / pieces
    events = []
    for i in range(pieces):
        lat, lon = offset(*start, (i + 0.5) * piece + rng.gauss(0, noise_m), rng.gauss(0, noise_m))
        size = {"width": 0.1, "length": piece} | ({"orientation_deg": rng.uniform(175, 185) % 180} if oriented else {})
        events.append(make_event(device, lat, lon, at=at + timedelta(seconds=i), seq=i, cls="crack", h=2.0,
                                 severity=0.2, size_m=size))
    return events


def crack_defects(cfg) -> list[tuple]:
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:
        return conn.execute(f"SELECT {DEFECT_COLUMNS} FROM defects d WHERE class = 'crack' ORDER BY id").fetchall()


def line_bearing_and_length(coords: list[list[float]]) -> tuple[float, float]:
    (lon1, lat1), (lon2, lat2) = coords[0], coords[-1]
    east, north = enu_offset(lat1, lon1, lat2, lon2)
    return math.degrees(math.atan2(east, north)) % 180.0, math.hypot(east, north)


def test_a_long_crack_seen_in_pieces_over_two_passes_is_one_defect(make_cfg) -> None:
    cfg = make_cfg()
    rng = random.Random(3)
    start = offset(*BASE, 0, 2.0)
    t0 = datetime.now(UTC) - timedelta(days=1)
    for p, device in enumerate(("veh-a", "veh-b")):
        events = crack_pieces(start, 20.0, 5, rng, device, t0 + timedelta(hours=p))
        rng.shuffle(events)
        store(cfg, events)
    rows = crack_defects(cfg)
    assert len(rows) == 1, [(r[0], r[7], r[-1]) for r in rows]
    feature = defect_feature(rows[0])
    props = feature["properties"]
    assert props["sighting_count"] == 10 and props["vehicle_count"] == 2 and props["status"] == "confirmed"
    bearing, length = line_bearing_and_length(props["line"])
    assert min(bearing, 180 - bearing) <= 15, bearing          # runs north-south, as the crack does
    assert 16.0 <= length <= 30.0, length                      # spans the crack (plus the sightings' noise)
    assert props["line_length_m"] == pytest.approx(length, abs=0.2)  # exports gave one piece's length alone
    # Its position is on the crack, near the middle.
    assert metres((props["lat"], props["lon"]), offset(*start, 10.0, 0)) <= 3.0
    # The map's feature is the marker's point; the GIS export draws the line itself.
    assert feature["geometry"]["type"] == "Point"
    assert export_feature(rows[0])["geometry"] == {"type": "LineString", "coordinates": props["line"]}


def test_without_orientation_the_same_pieces_stay_apart(make_cfg) -> None:
    """The line is what merges them: the same sightings as points (an agent that does not say the orientation)
    are several defects, as 4 m pieces 4 m apart are beyond the 5 m point gate once noise spreads them."""
    cfg = make_cfg()
    rng = random.Random(3)
    t0 = datetime.now(UTC) - timedelta(days=1)
    store(cfg, crack_pieces(offset(*BASE, 0, 2.0), 40.0, 5, rng, "veh-a", t0, oriented=False, noise_m=0.3))
    rows = crack_defects(cfg)
    assert len(rows) >= 3 and all(r[-1] is None for r in rows)


def test_separate_cracks_and_a_pothole_on_a_crack_stay_apart(make_cfg) -> None:
    cfg = make_cfg()
    rng = random.Random(5)
    t0 = datetime.now(UTC) - timedelta(days=1)
    first, second = offset(*BASE, 0, 0), offset(*BASE, 30.0, 0)   # two 8 m cracks 22 m apart along one road
    events = crack_pieces(first, 8.0, 2, rng, "veh-a", t0, noise_m=0.5) \
        + crack_pieces(second, 8.0, 2, rng, "veh-a", t0 + timedelta(seconds=5), noise_m=0.5)
    pothole = make_event("veh-a", *offset(*first, 4.0, 0), at=t0 + timedelta(seconds=9), seq=9)
    store(cfg, [*events, pothole])
    rows = crack_defects(cfg)
    assert len(rows) == 2, [(r[0], r[7], r[-1]) for r in rows]
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:
        assert conn.execute("SELECT count(*), count(line) FROM defects WHERE class = 'pothole'").fetchone() == (1, 0)


def test_area_cracks_beside_a_long_cracks_end_join_it(make_cfg) -> None:
    """Alligator cracking seen as an area (no orientation) 2-4 m beside a 60 m crack's far end, 25 m and more
    from its marker, became defects of their own: a sighting joined, and two defects merged, only when their
    markers were close. The line is what counts, whichever way the sightings arrive."""
    cfg = make_cfg()
    rng = random.Random(7)
    start = offset(*BASE, 0, 2.0)
    t0 = datetime.now(UTC) - timedelta(days=1)
    store(cfg, crack_pieces(start, 60.0, 12, rng, "veh-a", t0, noise_m=0.3))
    (line,) = crack_defects(cfg)
    patches = [make_event("veh-b", *offset(*start, north, 2.5), at=t0 + timedelta(hours=1, seconds=k), seq=k,
                          cls="crack", h=2.0, severity=0.4, size_m={"width": 1.5, "length": 1.5})
               for k, north in enumerate((52.0, 57.0))]
    store(cfg, patches[:1])  # alone: joins the line it lies beside
    store(cfg, patches[1:])
    rows = crack_defects(cfg)
    assert [r[0] for r in rows] == [line[0]], [(r[0], r[7], r[-1]) for r in rows]
    assert defect_feature(rows[0])["properties"]["sighting_count"] == 14


def test_a_crack_line_does_not_grow_without_bound(make_cfg) -> None:
    """Joining by the whole line, with no bound on the markers, chained pieces 8 m apart along a road into one
    defect 1 km long, its marker 500 m from either end: where would a crew go? The marker must stay within
    max_line_m of what joins it, so a line stays about two of those long."""
    cfg = make_cfg()
    agg = cfg.aggregate
    t0 = datetime.now(UTC) - timedelta(days=1)
    for i in range(40):  # 3 m pieces, 5 m gaps, arriving one by one along the road
        lat, lon = offset(*BASE, 8.0 * i, 0.0)
        store(cfg, [make_event("veh-a", lat, lon, at=t0 + timedelta(seconds=i), seq=i, cls="crack", h=2.0,
                               severity=0.2, size_m={"width": 0.1, "length": 3.0, "orientation_deg": 0.0})])
    rows = crack_defects(cfg)
    lengths = [line_bearing_and_length(defect_feature(r)["properties"]["line"])[1] for r in rows]
    bound = 2 * (max(agg.max_gate_m, agg.merge_radius_m) + agg.max_line_m) + 3.0
    assert len(rows) >= 3 and max(lengths) <= bound, lengths
    assert sum(defect_feature(r)["properties"]["sighting_count"] for r in rows) == 40


def test_side_by_side_cracks_in_one_batch_stay_two(make_cfg) -> None:
    """A batch's new sightings were grouped by centre distance less both half-lengths: two parallel cracks
    12-20 m apart, in one batch, read as touching and became one defect with its line down the middle."""
    cfg = make_cfg()
    t0 = datetime.now(UTC) - timedelta(days=1)
    store(cfg, [make_event("veh-a", *offset(*BASE, 0.0, east), at=t0 + timedelta(seconds=i), seq=i, cls="crack",
                           h=2.0, severity=0.2, size_m={"width": 0.1, "length": 20.0, "orientation_deg": 0.0})
                for i, east in enumerate((0.0, 15.0))])
    rows = crack_defects(cfg)
    assert len(rows) == 2, [(r[0], r[1], r[2]) for r in rows]


def test_a_crack_crossing_another_is_its_own_defect(make_cfg) -> None:
    """A transverse crack across a longitudinal one joined it, and with as many sightings the defect's line
    turned across the road: the 10 m longitudinal crack was gone from the map."""
    cfg = make_cfg()
    t0 = datetime.now(UTC) - timedelta(days=1)
    for p in range(3):
        at = t0 + timedelta(hours=p)
        store(cfg, [make_event(f"veh-{p}", *BASE, at=at, seq=1, cls="crack", h=2.0, severity=0.2,
                               size_m={"width": 0.1, "length": 10.0, "orientation_deg": 0.0}),
                    make_event(f"veh-{p}", *BASE, at=at + timedelta(seconds=1), seq=2, cls="crack", h=2.0,
                               severity=0.2, size_m={"width": 0.1, "length": 7.0, "orientation_deg": 90.0})])
    bearings = sorted(round(line_bearing_and_length(defect_feature(r)["properties"]["line"])[0]) % 180
                      for r in crack_defects(cfg))
    assert len(bearings) == 2 and bearings[0] <= 5 and 85 <= bearings[1] <= 95, bearings
