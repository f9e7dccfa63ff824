"""Misses judged with the fleet's detection rate by offset beside the path (fleet_server/repair_odds.py): the
rule on hand-made records, then the curve learned from a real PostGIS and used by the aggregator."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleet_server import repair_odds
from fleet_server.config import AggregateConfig, ServerConfig
from fleet_server.repair_odds import Curve, Record, found_share, learn, still_there_chance
from tests.server_fixtures import make_cfg, make_coverage, make_event, offset, workers
from tests.test_server_aggregate import BASE, defects, store

__all__ = ["make_cfg", "workers"]
AGG = AggregateConfig()


def test_a_way_that_never_found_the_defect_proves_nothing() -> None:
    assert found_share(0, 5, 0.9, 4.0) == 0.0
    assert found_share(2, 0, None, 4.0) == pytest.approx(2 / 3)           # its record, one unseen miss more
    assert found_share(2, 0, 0.95, 4.0) == pytest.approx((4 * 0.95 + 2) / 6)
    assert found_share(2, 0, 0.95, 0.0) == pytest.approx(2 / 3)           # the prior switched off


def test_each_miss_is_judged_by_the_curve_at_its_ways_offset() -> None:
    """Found twice going north 1.0 m beside the path, once going south 3.2 m beside it. The fleet finds
    potholes 1.0 m off on 95 of 100 passes, 3.2 m off on 30 of 100; the crack curve does not apply."""
    curve = Curve({("pothole", 2): (95, 100), ("pothole", 6): (30, 100), ("crack", 2): (10, 100)}, 0.5, 30)
    record = Record("pothole", passes=[(0.0, 1.0), (2.0, 1.1), (180.0, 3.2)], missed_before=[179.0],
                    missed_after=[10.0, 185.0])
    north = 1 - (4 * 0.95 + 2) / (4 + 2)
    south = 1 - (4 * 0.30 + 1) / (4 + 1 + 1)
    assert still_there_chance(record, curve, AGG) == pytest.approx(north * south)
    assert still_there_chance(record, None, AGG) == pytest.approx((1 - 2 / 3) * (1 - 1 / 3))
    sparse = Curve({("pothole", 2): (29, 29)}, 0.5, 30)  # too few passes in the bin: the record alone
    assert still_there_chance(Record("pothole", [(0.0, 1.0)], [], [0.0]), sparse, AGG) == pytest.approx(0.5)


def test_the_curve_counts_passes_after_a_ways_first_finding_and_misses_before_the_last() -> None:
    records = [
        # north: found, found, found (two count); a miss before the last sighting; misses after it do not count
        Record("pothole", passes=[(0.0, 1.2), (5.0, 1.3), (0.0, 1.4)], missed_before=[3.0], missed_after=[0.0]),
        # found once each way: the first finding of a way makes the way known and is not counted
        Record("pothole", passes=[(0.0, 0.2), (180.0, 3.0)]),
        # a pass or a miss without heading has no way (and a pass no offset)
        Record("crack", passes=[(None, None), (90.0, 0.7), (92.0, 0.9)], missed_before=[None]),
    ]
    assert learn(records, AGG) == {("pothole", 2): (2, 3), ("crack", 1): (1, 1)}


# ------------------------------------------------------------------------------------------ on PostGIS

def street(hours_ago: float = 30):
    """A north-south street with a pothole 100 m up, 1.2 m east of the northbound vehicles' path."""
    start = datetime.now(UTC) - timedelta(hours=hours_ago)
    pothole = offset(*BASE, 100, 0)
    north = [offset(*BASE, 0, -1.2), offset(*BASE, 200, -1.2)]

    def window(hours: float) -> tuple[datetime, datetime]:
        return start + timedelta(hours=hours), start + timedelta(hours=hours, seconds=30)

    def seen(dev: str, hours: float, where: tuple[float, float] = pothole, beside_m: float = 1.2) -> dict:
        vehicle = offset(*where, -4.0, -beside_m)  # 4 m behind the defect, BESIDE_M to its west, heading north
        return make_event(dev, *where, at=window(hours)[0] + timedelta(seconds=15),
                          vehicle={"lat": vehicle[0], "lon": vehicle[1], "h_accuracy_m": 1.5, "speed_mps": 10.0,
                                   "heading_deg": 0.0})

    return north, window, seen


def curve_rows(cfg: ServerConfig) -> list[tuple]:
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:
        return conn.execute("SELECT class, offset_bin, found, passes FROM detection_by_offset "
                            "ORDER BY class, offset_bin").fetchall()


def set_curve(cfg: ServerConfig, rows: list[tuple[str, int, int, int]]) -> None:
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        conn.execute("DELETE FROM detection_by_offset")
        for cls, b, found, passes in rows:
            conn.execute("INSERT INTO detection_by_offset (class, offset_bin, bin_m, found, passes) "
                         "VALUES (%s, %s, 0.5, %s, %s)", (cls, b, found, passes))


@pytest.mark.services
def test_the_curve_is_learned_from_the_stored_sightings_and_misses(make_cfg) -> None:
    """Three northbound vehicles find the pothole 1.2 m beside their path, one misses it in between: the fleet
    found it on 2 of 3 passes there (the first finding does not count). A dismissed defect teaches nothing."""
    cfg = make_cfg()
    north, window, seen = street()
    store(cfg, [seen("veh-a", 0), seen("veh-b", 1)])
    store(cfg, coverage=[make_coverage("veh-c", north, *window(2))])
    store(cfg, [seen("veh-d", 3)])
    other = offset(*BASE, 500, 0)
    store(cfg, [seen("veh-a", 4, other, 3.2), seen("veh-b", 5, other, 3.2)])
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        assert repair_odds.refresh_curve(conn, cfg.aggregate) == 2
        assert curve_rows(cfg) == [("pothole", 2, 2, 3), ("pothole", 6, 1, 1)]
        conn.execute("UPDATE defects SET status = 'dismissed' WHERE id = 2")
        repair_odds.refresh_curve(conn, cfg.aggregate)
    assert curve_rows(cfg) == [("pothole", 2, 2, 3)]


@pytest.mark.services
def test_misses_in_the_wheel_path_flag_a_repair_sooner_than_by_the_kerb(make_cfg) -> None:
    """Two potholes, each found by 2 northbound passes: one 1.2 m beside their path, where the fleet finds
    potholes on 98 of 100 passes, one 3.2 m beside it (30 of 100). Two misses by two vehicles make the first
    0.02 % likely while it is there: flagged (under the default 0.1 %); the second 22 %: it stays. Its own
    record alone said 1/3 a miss for both (11 % for two)."""
    cfg = make_cfg()
    set_curve(cfg, [("pothole", 2, 98, 100), ("pothole", 6, 30, 100)])
    _north, window, seen = street()
    kerb = offset(*BASE, 300, 2.0)
    store(cfg, [seen("veh-a", 0), seen("veh-b", 1), seen("veh-a", 0.01, kerb, 3.2), seen("veh-b", 1.01, kerb, 3.2)])
    line = [offset(*BASE, 0, -1.2), offset(*BASE, 400, -1.2)]
    store(cfg, coverage=[make_coverage("veh-c", line, *window(2)), make_coverage("veh-d", line, *window(3))])
    rows = defects(cfg)
    assert [(r[3], r[7]) for r in rows] == [("likely_repaired", 2), ("confirmed", 2)]
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:
        odds = repair_odds.chances(conn, [rows[0][0], rows[1][0]], cfg.aggregate)
    assert odds[rows[0][0]] == pytest.approx((1 - (4 * 0.98 + 2) / 6) ** 2, rel=1e-3)
    assert odds[rows[1][0]] == pytest.approx((1 - (4 * 0.30 + 2) / 6) ** 2, rel=1e-3)


@pytest.mark.services
def test_only_a_sighting_takes_a_flag_back(make_cfg) -> None:
    """The curve is learned again as the fleet drives: a miss judged with a curve that now says passes rarely
    find such potholes must not turn a flagged one back to confirmed. A sighting does."""
    cfg = make_cfg()
    set_curve(cfg, [("pothole", 2, 98, 100)])
    north, window, seen = street()
    store(cfg, [seen("veh-a", 0), seen("veh-b", 1)])
    store(cfg, coverage=[make_coverage("veh-c", north, *window(2)), make_coverage("veh-d", north, *window(3))])
    assert defects(cfg)[0][3] == "likely_repaired"
    set_curve(cfg, [("pothole", 2, 5, 100)])
    store(cfg, coverage=[make_coverage("veh-e", north, *window(4))])
    assert defects(cfg)[0][3:8:4] == ("likely_repaired", 3)
    store(cfg, [seen("veh-f", 5)])
    assert defects(cfg)[0][3] == "confirmed"


@pytest.mark.services
def test_a_running_ingest_worker_learns_the_curve(make_cfg, workers) -> None:
    """The ingest worker learns the curve again every detection_curve_refresh_s, from what any worker stored."""
    cfg = make_cfg(aggregate={"detection_curve_refresh_s": 0.2})
    *_, seen = street()
    workers(cfg)
    store(cfg, [seen("veh-a", 0), seen("veh-b", 1), seen("veh-c", 2)])
    deadline = time.monotonic() + 15
    while not curve_rows(cfg) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert curve_rows(cfg) == [("pothole", 2, 2, 2)]
