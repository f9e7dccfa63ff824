"""The one Earth model (roadmon_contract.geodesy): WGS84 figures from the tables, exact round trips, arrays
and floats alike, and the same metres in the server's SQL and in PostGIS geography as in Python."""

from __future__ import annotations

import math

import numpy as np
import psycopg
import pytest

from fleet_server.migrate import migrate
from roadmon_contract.geodesy import (
    LocalFrame,
    compass_deg,
    distance_m,
    distances_m,
    enu_offset,
    metres_per_degree,
    offset_latlon,
)


def test_metres_per_degree_match_the_wgs84_tables() -> None:
    # One degree of latitude is 110,574 m at the equator and 111,694 m at the poles; at 45 deg 111,132 m.
    assert metres_per_degree(0.0)[0] == pytest.approx(110_574.3, abs=0.1)
    assert metres_per_degree(45.0)[0] == pytest.approx(111_132.0, abs=1.0)
    assert metres_per_degree(90.0)[0] == pytest.approx(111_694.0, abs=1.0)
    assert metres_per_degree(0.0)[1] == pytest.approx(111_319.5, abs=0.1)  # the equator's circumference / 360
    assert metres_per_degree(60.0)[1] == pytest.approx(55_799.98, abs=1.0)


def test_offsets_round_trip_and_distances_are_the_offsets_length() -> None:
    lat, lon = offset_latlon(48.16, 11.52, 30.0, -40.0)
    assert enu_offset(48.16, 11.52, lat, lon) == pytest.approx((30.0, -40.0), abs=1e-6)  # a micrometre
    assert distance_m(48.16, 11.52, lat, lon) == pytest.approx(50.0, abs=1e-6)


def test_arrays_convert_like_floats_and_the_antimeridian_is_crossed_the_short_way() -> None:
    frame = LocalFrame(-16.5, 179.9995)
    east = np.array([0.0, 50.0, 120.0])
    lat, lon = frame.to_geodetic(east, np.zeros(3))
    singles = [frame.to_geodetic(float(e), 0.0) for e in east]
    assert lat.tolist() == pytest.approx([s[0] for s in singles])
    assert lon.tolist() == pytest.approx([s[1] for s in singles])
    assert lon[2] < 0  # 120 m east of 179.9995 E lies west of the antimeridian...
    assert frame.to_enu(lat[2], lon[2])[0] == pytest.approx(120.0, abs=1e-6)  # ...and comes back 120 m east
    assert distances_m(-16.5, 179.9995, lat, lon).tolist() == pytest.approx([0.0, 50.0, 120.0], abs=1e-6)


@pytest.mark.services
def test_the_servers_sql_and_postgis_measure_the_same_metres(fresh_db: str) -> None:
    migrate(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        for lat in (-60.0, 0.0, 37.5, 48.16, 70.0):
            sql = conn.execute("SELECT m_per_deg_lat(%s), m_per_deg_lon(%s)", (lat, lat)).fetchone()
            assert sql == pytest.approx(metres_per_degree(lat), rel=1e-12)
        for east, north in ((3.0, 4.0), (-25.0, 10.0), (60.0, -80.0)):
            lat, lon = offset_latlon(48.16, 11.52, east, north)
            geog = conn.execute("SELECT ST_Distance(ST_MakePoint(11.52, 48.16)::geography, "
                                "ST_MakePoint(%s, %s)::geography)", (lon, lat)).fetchone()[0]
            # The tangent plane and the ellipsoid agree to a millimetre over a street's length.
            assert geog == pytest.approx(math.hypot(east, north), abs=1e-3)


def test_compass_bearings_stay_below_360():
    assert -1e-15 % 360.0 == 360.0  # the float quirk compass_deg exists for (found by the filter's fuzz test)
    assert compass_deg(-1e-15) == 0.0
    assert compass_deg(-90.0) == 270.0 and compass_deg(720.5) == 0.5 and compass_deg(359.9) == 359.9
