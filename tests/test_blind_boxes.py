"""A box that drives past the defects the rest of the fleet finds and reports none of them is a problem the server
names (`finds_nothing`), judged from its own misses on a real PostGIS; its first finding clears it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleet_server import blind_boxes, repair_odds
from fleet_server.config import AggregateConfig, ServerConfig
from fleet_server.device_view import device_rows
from tests.server_fixtures import make_cfg, make_coverage, make_event, offset, store, wait_for, workers

pytestmark = pytest.mark.services

__all__ = ["make_cfg", "workers"]
BASE = (48.137, 11.575)
POTHOLES = [offset(*BASE, 100.0 * (i + 1), 0.0) for i in range(6)]
STREET = [offset(*BASE, 0, 0), offset(*BASE, 700, 0)]
START = datetime.now(UTC) - timedelta(days=2)


def drive(cfg: ServerConfig, device: str, hour: float, finds: bool) -> None:
    """One northbound pass up the street, a minute long: events of every pothole when the box FINDS them."""
    t0 = START + timedelta(hours=hour)
    events = [make_event(device, *p, at=t0 + timedelta(seconds=8 * (i + 1))) for i, p in enumerate(POTHOLES)]
    store(cfg, events if finds else [], [make_coverage(device, STREET, t0, t0 + timedelta(seconds=60))])


def judged(cfg: ServerConfig) -> dict[str, dict]:
    """Learn the curve, judge the boxes as an ingest worker's round does; each device's row from the API's view."""
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        repair_odds.refresh_curve(conn, cfg.aggregate)
        blind_boxes.judge(conn, cfg.aggregate)
        return {r["id"]: r for r in device_rows(conn, datetime.now(UTC), 600.0)}


def test_the_misses_that_prove_a_box_blind_follow_the_fleets_rate() -> None:
    cfg = AggregateConfig()  # half the fleet's rate, 0.1 %
    assert blind_boxes.fewest_misses(0.5, cfg) == 25  # 0.75 ** 24 = 0.10 %, 0.75 ** 25 = 0.075 %
    assert blind_boxes.fewest_misses(0.9, cfg) == 12  # 0.55 ** 11 = 0.14 %, 0.55 ** 12 = 0.077 %
    assert blind_boxes.fewest_misses(0.0, cfg) is None  # a fleet that finds nothing proves nothing
    assert 0.75 ** 25 < cfg.blind_chance < 0.75 ** 24


def test_a_box_that_passes_what_the_fleet_finds_and_reports_nothing_is_named(make_cfg) -> None:
    cfg = make_cfg(aggregate={"offset_bin_min_passes": 5})
    # Two vehicles find the six potholes on every pass; veh-z drives the same street as often and finds nothing.
    # After each of its passes a good one finds them again, so they were there when it passed.
    drive(cfg, "veh-a", 0, finds=True)
    for k in range(5):
        drive(cfg, "veh-z", 1 + 2 * k, finds=False)
        drive(cfg, "veh-b" if k % 2 else "veh-a", 2 + 2 * k, finds=True)
    rows = judged(cfg)
    # The curve: 30 later finds against 30 misses, half. A box finding a quarter misses 30 in a row at 0.018 %.
    blind = rows["veh-z"]
    assert "finds_nothing" in blind["problem_codes"], blind["problems"]
    [words] = [w for w in blind["problems"] if "reported none" in w]
    assert "past 6 defects other vehicles found, 30 times since " in words and "find such defects on 50 %" in words
    assert rows["veh-a"]["problem_codes"] == [] and rows["veh-b"]["problem_codes"] == []
    # Its misses prove nothing about the potholes while it is named: another blind pass leaves them as sure.
    drive(cfg, "veh-z", 11, finds=False)
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM defects")]
        assert set(repair_odds.chances(conn, ids, cfg.aggregate).values()) == {1.0}
        conn.execute("UPDATE devices SET finds_nothing = NULL WHERE id = 'veh-z'")  # as if it were not named
        assert max(repair_odds.chances(conn, ids, cfg.aggregate).values()) < 1.0
    # Its first finding after the fix clears it: the misses before it no longer count.
    drive(cfg, "veh-z", 12, finds=True)
    assert judged(cfg)["veh-z"]["problem_codes"] == []


def test_too_few_misses_or_defects_prove_nothing(make_cfg) -> None:
    cfg = make_cfg(aggregate={"offset_bin_min_passes": 5})
    drive(cfg, "veh-a", 0, finds=True)
    for k in range(3):  # 18 misses: a box finding a quarter of them would miss as many one time in 180
        drive(cfg, "veh-z", 1 + 2 * k, finds=False)
        drive(cfg, "veh-a", 2 + 2 * k, finds=True)
    assert judged(cfg)["veh-z"]["problem_codes"] == []
    # Stricter settings: the same run names it, unless fewer defects than blind_min_defects were missed.
    strict = make_cfg(aggregate={"offset_bin_min_passes": 5, "blind_chance": 0.01})
    assert "finds_nothing" in judged(strict)["veh-z"]["problem_codes"]
    few = make_cfg(aggregate={"offset_bin_min_passes": 5, "blind_chance": 0.01, "blind_min_defects": 7})
    assert judged(few)["veh-z"]["problem_codes"] == []


def test_an_ingest_worker_judges_the_boxes_when_it_learns_the_curve(make_cfg, workers) -> None:
    cfg = make_cfg(aggregate={"offset_bin_min_passes": 5})
    drive(cfg, "veh-a", 0, finds=True)
    for k in range(5):
        drive(cfg, "veh-z", 1 + 2 * k, finds=False)
        drive(cfg, "veh-a", 2 + 2 * k, finds=True)
    workers(cfg)  # its first round runs at start

    def named() -> bool:
        with psycopg.connect(cfg.database.resolve_dsn()) as conn:
            rows = {r["id"]: r for r in device_rows(conn, datetime.now(UTC), 600.0)}
        return "finds_nothing" in rows["veh-z"]["problem_codes"]

    assert wait_for(named, 20)


def test_a_flag_that_rested_on_blind_misses_goes_back_once_the_boxes_are_named(make_cfg) -> None:
    """Two blind vans miss a pothole on a side street that nobody passes after them: their misses flag it
    likely_repaired before they are named (the naming rests on the main street, which others drive after
    them). Once named, the flag is judged without their misses and goes back."""
    cfg = make_cfg(aggregate={"offset_bin_min_passes": 5, "repair_chance": 0.1})
    side = [offset(*BASE, 0, 1000), offset(*BASE, 200, 1000)]
    pothole = offset(*BASE, 100, 1000)

    def side_pass(device: str, hour: float, finds: bool) -> None:
        t0 = START + timedelta(hours=hour)
        events = [make_event(device, *pothole, at=t0 + timedelta(seconds=10))] if finds else []
        store(cfg, events, [make_coverage(device, side, t0, t0 + timedelta(seconds=30))])

    side_pass("veh-a", 0.2, finds=True)
    side_pass("veh-b", 0.4, finds=True)
    for k in range(8):
        drive(cfg, "veh-z", 1 + 3 * k, finds=False)
        drive(cfg, "veh-y", 2 + 3 * k, finds=False)
        drive(cfg, "veh-b" if k % 2 else "veh-a", 3 + 3 * k, finds=True)
        if k < 2:
            side_pass("veh-z", 1.5 + 3 * k, finds=False)
            side_pass("veh-y", 2.5 + 3 * k, finds=False)
    dsn = cfg.database.resolve_dsn()
    with psycopg.connect(dsn) as conn:
        [(side_id, status)] = conn.execute("SELECT id, status FROM defects WHERE ST_X(geom::geometry) > %s",
                                           (BASE[1] + 0.005,)).fetchall()
    assert status == "likely_repaired"  # 4 misses by 2 vans of a pothole found on 2 of 2 passes: (1/3)^4
    rows = judged(cfg)
    assert {d for d, r in rows.items() if "finds_nothing" in r["problem_codes"]} == {"veh-y", "veh-z"}
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT status FROM defects WHERE id = %s", (side_id,)).fetchone() == ("confirmed",)
        history = conn.execute("SELECT actor, from_status, to_status FROM defect_history WHERE defect_id = %s "
                               "ORDER BY id", (side_id,)).fetchall()
    assert history[-2:] == [("aggregator", "confirmed", "likely_repaired"),
                            ("aggregator", "likely_repaired", "confirmed")]


def test_a_stray_box_of_its_own_is_no_finding(make_cfg) -> None:
    """A blind van that boxes one shadow on every drive (a 'defect' no other vehicle sees) made a finding of it, and
    its run of misses started again each time: it was never named. A finding is a defect another vehicle saw too."""
    cfg = make_cfg(aggregate={"offset_bin_min_passes": 5})
    shadow = offset(*BASE, 650, 0)
    drive(cfg, "veh-a", 0, finds=True)
    for k in range(5):
        t0 = START + timedelta(hours=1 + 2 * k)
        store(cfg, [make_event("veh-z", *shadow, at=t0 + timedelta(seconds=55))],
              [make_coverage("veh-z", STREET, t0, t0 + timedelta(seconds=60))])
        drive(cfg, "veh-b" if k % 2 else "veh-a", 2 + 2 * k, finds=True)
    blind = judged(cfg)["veh-z"]
    assert "finds_nothing" in blind["problem_codes"], blind["problems"]
    assert "no finding in the last 7 days" in " ".join(blind["problems"])
