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


def flagged_street(cfg: ServerConfig):
    """street() with its pothole found by two northbound vehicles, where the fleet finds potholes on 98 passes in
    100, then missed by two: likely_repaired."""
    set_curve(cfg, [("pothole", 2, 98, 100)])
    north, window, seen = street()
    store(cfg, [seen("veh-a", 0), seen("veh-b", 1)])
    store(cfg, coverage=[make_coverage("veh-c", north, *window(2)), make_coverage("veh-d", north, *window(3))])
    assert defects(cfg)[0][3] == "likely_repaired"
    return north, window, seen


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
    north, window, seen = flagged_street(cfg)
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


# ------------------------------------------------------------------- what a flag rests on (review findings)


@pytest.mark.services
def test_a_bin_width_a_float_cannot_hold_exactly_still_finds_its_curve(make_cfg) -> None:
    cfg = make_cfg(aggregate={"offset_bin_m": 0.3, "offset_bin_min_passes": 1})
    _north, _window, seen = street()
    store(cfg, [seen("veh-a", 0, beside_m=1.35), seen("veh-b", 1, beside_m=1.35), seen("veh-c", 2, beside_m=1.35)])
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        repair_odds.refresh_curve(conn, cfg.aggregate)
        assert repair_odds.load_curve(conn, cfg.aggregate).bins == {("pothole", 4): (2, 2)}


@pytest.mark.services
def test_a_defect_seen_very_often_does_not_empty_the_curve_and_a_quiet_round_keeps_it(make_cfg) -> None:
    """The newest defect alone counts more sightings than the learning reads (a pothole at a depot gate): it is
    learned from anyway. A round with nothing seen in the window keeps the last curve."""
    cfg = make_cfg()
    _north, _window, seen = street()
    store(cfg, [seen("veh-a", 0), seen("veh-b", 1), seen("veh-c", 2)])
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        conn.execute("UPDATE defects SET sighting_count = %s", (repair_odds.CURVE_SIGHTINGS * 3,))
        assert repair_odds.refresh_curve(conn, cfg.aggregate) == 1
        assert curve_rows(cfg) == [("pothole", 2, 2, 2)]
        conn.execute("UPDATE defects SET last_seen = now() - interval '30 days'")
        assert repair_odds.refresh_curve(conn, cfg.aggregate) == 0
    assert curve_rows(cfg) == [("pothole", 2, 2, 2)]


@pytest.mark.services
def test_an_old_sighting_uploaded_late_does_not_take_a_flag_back(make_cfg) -> None:
    """A vehicle back from a day offline uploads a sighting from before the misses that made the flag: no
    evidence against it, so a later miss judged with a curve learned lower since must not undo the flag."""
    cfg = make_cfg()
    north, window, seen = flagged_street(cfg)
    store(cfg, [seen("veh-x", 1.5)])
    set_curve(cfg, [("pothole", 2, 5, 100)])
    store(cfg, coverage=[make_coverage("veh-e", north, *window(4))])
    assert defects(cfg)[0][3] == "likely_repaired"


@pytest.mark.parametrize("order", ["in time order", "coverage after the later sighting"])
@pytest.mark.services
def test_a_miss_between_sightings_counts_whatever_order_it_arrives_in(make_cfg, order: str) -> None:
    """veh-c drove by at 2 h without seeing the pothole found at 0, 1 and 3 h. A box that uploads at the depot
    sends that coverage record after the 3 h sighting reached the server: the miss is the same miss."""
    cfg = make_cfg()
    north, window, seen = street()
    store(cfg, [seen("veh-a", 0), seen("veh-b", 1)])
    late = make_coverage("veh-c", north, *window(2))
    if order == "in time order":
        store(cfg, coverage=[late])
    store(cfg, [seen("veh-d", 3)])
    if order != "in time order":
        store(cfg, coverage=[late])
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        repair_odds.refresh_curve(conn, cfg.aggregate)
    assert curve_rows(cfg) == [("pothole", 2, 2, 3)]
    assert defects(cfg)[0][3:8:4] == ("confirmed", 0)  # a miss before the last sighting flags nothing


@pytest.mark.services
def test_phone_reports_are_no_passes(make_cfg) -> None:
    """People on the pavement reporting a kerb pothole say it is there, not that vehicles in the lane see it:
    their reports do not make the lane's misses weigh more."""
    cfg = make_cfg()
    north, window, seen = street()
    store(cfg, [seen("veh-a", 0)])
    phone = {"lat": 0.0, "lon": 0.0, "h_accuracy_m": 8.0}
    reports = []
    for i in range(5):
        report = seen(f"phone-{i}", 0.1 * (i + 1))
        report["vehicle"] = phone | {"lat": report["position"]["lat"], "lon": report["position"]["lon"] - 1e-5}
        reports.append(report | {"ground_projected": False})
    store(cfg, reports)
    store(cfg, coverage=[make_coverage("veh-c", north, *window(2))])
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:
        [record] = repair_odds.load_records(conn, [defects(cfg)[0][0]], cfg.aggregate).values()
    assert len(record.passes) == 1 and record.missed_after == [pytest.approx(0.0, abs=1.0)]


@pytest.mark.services
def test_two_defects_merged_keep_no_miss_from_a_pass_that_saw_either(make_cfg) -> None:
    from fleet_server import aggregate

    cfg = make_cfg()
    north, window, seen = street()
    near = offset(*BASE, 140, 0)
    store(cfg, [seen("veh-a", 0), seen("veh-a", 0.01, near), seen("veh-b", 1), seen("veh-b", 1.01, near)])
    store(cfg, [seen("veh-c", 2.005, near)])
    store(cfg, coverage=[make_coverage("veh-c", north, *window(2))])  # saw `near`, missed the first one
    first, second = (r[0] for r in defects(cfg))
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT device_id FROM defect_misses WHERE defect_id = %s", (first,)).fetchall() \
            == [("veh-c",)]
        with conn.transaction():
            aggregate._fold(conn, first, second, aggregate._ranks(conn, {first, second}))
        assert conn.execute("SELECT count(*) FROM defect_misses WHERE defect_id = %s", (first,)).fetchone()[0] == 0


@pytest.mark.services
def test_a_managers_still_there_discounts_the_misses_before(make_cfg) -> None:
    """A manager sends a crew, finds the pothole still there and sets it confirmed: one more miss must not flag
    it again on the strength of the misses before the visit. Those misses happened while it was there: they
    now say how often passes going north miss it (2 found, 2 missed: a miss is 26 % likely)."""
    from fleet_server import aggregate

    cfg = make_cfg()
    north, window, _seen = flagged_street(cfg)
    [(defect_id, *_rest)] = defects(cfg)
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        aggregate.set_status(conn, defect_id, "likely_repaired", "confirmed", "maria", "still there")
        assert conn.execute("SELECT checked_at > now() - interval '1 minute', miss_count FROM defects").fetchone() \
            == (True, 0)
        # the visit between the misses of 3 h and 4 h of this street's made-up morning
        conn.execute("UPDATE defects SET checked_at = %s WHERE id = %s", (window(3.5)[0], defect_id))
    store(cfg, coverage=[make_coverage("veh-e", north, *window(4))])
    assert defects(cfg)[0][3:8:4] == ("confirmed", 1)
    store(cfg, coverage=[make_coverage("veh-f", north, *window(5))])
    assert defects(cfg)[0][3:8:4] == ("confirmed", 2)
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:
        odds = repair_odds.chances(conn, [defect_id], cfg.aggregate)[defect_id]
    assert odds == pytest.approx((1 - (4 * 0.98 + 2) / (4 + 2 + 2)) ** 2, rel=1e-3)
