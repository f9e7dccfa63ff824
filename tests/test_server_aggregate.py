"""Aggregation on a real PostGIS: many vehicles and passes -> one defect per pothole, in the right place;
coverage misses -> likely_repaired; automatic status changes in the history."""

from __future__ import annotations

import logging
import math
import random
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleet_server import aggregate, repair_odds
from fleet_server.config import ServerConfig
from roadmon_contract.geodesy import distance_m
from roadmon_contract.ids import uuid7
from tests.server_fixtures import count, make_cfg, make_coverage, make_event, offset, store

pytestmark = pytest.mark.services  # every test here runs against the local PostGIS/Mosquitto

__all__ = ["make_cfg"]
BASE = (48.137, 11.575)


def defects(cfg: ServerConfig) -> list[tuple]:
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:
        return conn.execute("""SELECT id, ST_Y(geom::geometry), ST_X(geom::geometry), status, sighting_count,
                                      vehicle_count, pass_count, miss_count FROM defects ORDER BY id""").fetchall()


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    return distance_m(a[0], a[1], b[0], b[1])


@pytest.mark.parametrize("seed", [1, 2])
def test_three_vehicles_four_passes_give_ten_defects(make_cfg, seed: int) -> None:
    """10 potholes 40 m apart; 3 vehicles x 4 passes; each sighting off by 3 m RMS (h_accuracy 3 m)."""
    cfg = make_cfg()
    rng = random.Random(seed)
    truth = [offset(*BASE, 40.0 * i, 3.0 * (i % 2)) for i in range(10)]
    sigma = 3.0 / math.sqrt(2)  # per axis, so the radial RMS error is 3 m
    start = datetime.now(UTC) - timedelta(days=2)
    for p in range(4):
        for v in range(3):
            t0 = start + timedelta(hours=6 * p, minutes=20 * v)
            events = [make_event(f"veh-{v}", *offset(*pos, rng.gauss(0, sigma), rng.gauss(0, sigma)), h=3.0,
                                 at=t0 + timedelta(seconds=4 * i), seq=p * 100 + i) for i, pos in enumerate(truth)]
            rng.shuffle(events)
            store(cfg, events)
    found = defects(cfg)
    assert len(found) == 10, [(round(r[1], 6), round(r[2], 6), r[4]) for r in found]
    for row in found:
        nearest = min(truth, key=lambda t: metres(t, (row[1], row[2])))
        assert metres(nearest, (row[1], row[2])) <= 2.0
        assert row[3] == "confirmed" and row[4] == 12 and row[5] == 3 and row[6] == 12
    assert count(cfg.database.resolve_dsn(), "SELECT count(*) FROM sightings WHERE defect_id IS NULL") == 0


def test_two_potholes_one_vehicle_saw_apart_in_one_view_stay_two(make_cfg) -> None:
    """Two potholes 4.6 m apart, in different lanes, reported by one vehicle seconds apart (their positions share
    that pass's GNSS error): the server made one defect of them, its gate (5 m or more) being sized for the error
    between passes. Passes by other vehicles, with their own errors, keep them two; a phone's photos a few metres
    apart (its own position, not the pothole's) and one vehicle's repeat 1 m off stay one defect each."""
    cfg = make_cfg()
    start = datetime.now(UTC) - timedelta(hours=3)
    truth = [offset(*BASE, 0.0, 0.0), offset(*BASE, 1.2, 4.44)]  # 4.6 m apart
    for p, (dev, north, east) in enumerate((("veh-a", 2.0, -1.0), ("veh-b", -1.5, 1.0), ("veh-c", 0.5, 2.0))):
        t0 = start + timedelta(hours=p)
        store(cfg, [make_event(dev, *offset(*pos, north, east), h=2.7, at=t0 + timedelta(seconds=i), seq=i)
                    for i, pos in enumerate(truth)])
    found = defects(cfg)
    assert len(found) == 2, found
    for row in found:
        assert min(metres(t, (row[1], row[2])) for t in truth) < 1.5 and row[4] == 3
    repeat = offset(*BASE, 100.0, 0.0)  # the agent's two tracks of one pothole, 1 m apart: one defect
    store(cfg, [make_event("veh-a", *repeat, at=start), make_event("veh-a", *offset(*repeat, 1.0, 0.0),
                                                                   at=start + timedelta(seconds=5), seq=5)])
    phone = offset(*BASE, 200.0, 0.0)  # a phone's photos from 3 m apart: not ground-projected
    store(cfg, [make_event("phone-1", *phone, at=start, ground_projected=False),
                make_event("phone-1", *offset(*phone, 3.0, 0.0), at=start + timedelta(seconds=20), seq=1,
                           ground_projected=False)])
    assert len(defects(cfg)) == 4


def test_of_two_sightings_seen_apart_the_one_farther_from_the_defect_leaves_it(make_cfg) -> None:
    """Two potholes 6 m apart on one road; three passes saw only the second. On a fourth, the vehicle's sighting
    of the first arrived first and joined the second's defect (6 m is inside the gate); its sighting of the second,
    a second later, was then pushed out as 'seen apart in one view': the first pothole had no marker of its own,
    the second two."""
    cfg = make_cfg()
    start = datetime.now(UTC) - timedelta(hours=5)
    first, second = offset(*BASE, 0.0, 0.0), offset(*BASE, 6.0, 0.0)
    for p, (north, east) in enumerate(((0.6, -0.4), (-0.5, 0.3), (0.2, 0.5))):
        store(cfg, [make_event(f"veh-{p}", *offset(*second, north, east), h=2.7, at=start + timedelta(hours=p))])
    t4 = start + timedelta(hours=4)
    store(cfg, [make_event("veh-a", *offset(*first, 0.3, 0.0), h=2.7, at=t4, seq=1)])
    store(cfg, [make_event("veh-a", *offset(*second, 0.3, 0.0), h=2.7, at=t4 + timedelta(seconds=1), seq=2)])
    found = defects(cfg)
    assert len(found) == 2, found
    by_truth = {min((0, 1), key=lambda k: metres((first, second)[k], (row[1], row[2]))): row for row in found}
    assert sorted(by_truth) == [0, 1] and by_truth[1][4] == 4 and by_truth[0][4] == 1, found
    for k, truth in enumerate((first, second)):
        assert metres(truth, (by_truth[k][1], by_truth[k][2])) < 1.0, found


def seen_by_two_vehicles(cfg: ServerConfig):
    """A pothole 100 m up a street seen on passes 0 and 1 (hours after a day ago) by veh-a and veh-b: the
    pothole, the street's line (right over it) and the time window of a 30 s pass H hours in."""
    pothole = offset(*BASE, 100, 0)
    line = [offset(*BASE, 0, 0), offset(*BASE, 200, 0)]
    start = datetime.now(UTC) - timedelta(days=1)

    def pass_at(hours: float) -> tuple[datetime, datetime]:
        return start + timedelta(hours=hours), start + timedelta(hours=hours, seconds=30)

    for hours, dev in ((0, "veh-a"), (1, "veh-b")):
        t0, t1 = pass_at(hours)
        store(cfg, [make_event(dev, *pothole, at=t0 + timedelta(seconds=15))], [make_coverage(dev, line, t0, t1)])
    return pothole, line, pass_at


def test_misses_make_a_defect_likely_repaired(make_cfg) -> None:
    cfg = make_cfg(aggregate={"repair_chance": 0.01})  # the rule's arithmetic at 1 %
    dsn = cfg.database.resolve_dsn()
    pothole, line, pass_at = seen_by_two_vehicles(cfg)  # seen by two vehicles in two passes: confirmed
    [(defect_id, *_rest, status, _s, _v, _p, misses)] = defects(cfg)
    assert status == "confirmed" and misses == 0
    # Passes with the detector off are no evidence; a coverage record off to the side neither.
    t0, t1 = pass_at(2)
    side = [offset(*BASE, 0, 30), offset(*BASE, 200, 30)]
    store(cfg, coverage=[make_coverage("veh-a", line, t0, t1, detector_active=False),
                         make_coverage("veh-b", side, t0, t1)])
    assert defects(cfg)[0][7] == 0
    # Passes over it that saw nothing, but all from one vehicle: not enough vehicles.
    for hours in (3, 4, 5, 6):
        store(cfg, coverage=[make_coverage("veh-a", line, *pass_at(hours))])
    assert defects(cfg)[0][3] == "confirmed" and defects(cfg)[0][7] == 4
    # A second vehicle misses it too: likely repaired, 5 misses being unlikely (1/3 ** 5 < 1 %) for a defect
    # seen on both of its 2 passes (rate 2/3 with one unseen miss assumed).
    store(cfg, coverage=[make_coverage("veh-b", line, *pass_at(7))])
    assert defects(cfg)[0][3] == "likely_repaired"
    # Then someone sees it again: back to confirmed, the old misses no longer count.
    store(cfg, [make_event("veh-c", *pothole, at=pass_at(8)[0])])
    assert defects(cfg)[0][3] == "confirmed" and defects(cfg)[0][7] == 0
    # A coverage record that arrives before its own pass's event is a miss only until the event comes.
    t0, t1 = pass_at(9)
    store(cfg, coverage=[make_coverage("veh-c", line, t0, t1)])
    assert defects(cfg)[0][7] == 1
    store(cfg, [make_event("veh-c", *pothole, at=t0 + timedelta(seconds=10))])
    assert defects(cfg)[0][7] == 0
    with psycopg.connect(dsn) as conn:
        history = conn.execute("SELECT actor, from_status, to_status FROM defect_history WHERE defect_id = %s "
                               "ORDER BY id", (defect_id,)).fetchall()
    assert history == [("aggregator", "new", "confirmed"), ("aggregator", "confirmed", "likely_repaired"),
                       ("aggregator", "likely_repaired", "confirmed")]


def test_a_scheduled_defect_seen_again_after_misses_goes_back_on_the_schedule(make_cfg) -> None:
    """Misses make a scheduled pothole likely_repaired (the crew may have come early); a sighting after that
    once made it `confirmed`, and the crew's booking fell off the manager's scheduled list."""
    cfg = make_cfg(aggregate={"repair_chance": 0.01})  # the rule's arithmetic at 1 %
    pothole, line, pass_at = seen_by_two_vehicles(cfg)
    [(defect_id, *_rest)] = defects(cfg)
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        aggregate.set_status(conn, defect_id, "confirmed", "scheduled", "maria", "crew A on Tuesday")
    for hours, dev in ((2, "veh-a"), (3, "veh-b"), (4, "veh-a"), (5, "veh-b"), (6, "veh-a")):
        store(cfg, coverage=[make_coverage(dev, line, *pass_at(hours))])
    assert defects(cfg)[0][3] == "likely_repaired"
    store(cfg, [make_event("veh-c", *pothole, at=pass_at(7)[0])])
    assert defects(cfg)[0][3] == "scheduled"
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:
        history = conn.execute("SELECT actor, from_status, to_status FROM defect_history WHERE defect_id = %s "
                               "ORDER BY id", (defect_id,)).fetchall()
    assert history[-3:] == [("maria", "confirmed", "scheduled"), ("aggregator", "scheduled", "likely_repaired"),
                            ("aggregator", "likely_repaired", "scheduled")]


def street_with_a_pothole():
    """A pothole 100 m up a north-south street: the pothole, the street's lines northbound, southbound and
    across it there, and the time window of a 30 s pass H hours after a day ago."""
    north = [offset(*BASE, 0, 0), offset(*BASE, 200, 0)]
    start = datetime.now(UTC) - timedelta(days=1)

    def window(hours: float) -> tuple[datetime, datetime]:
        return start + timedelta(hours=hours), start + timedelta(hours=hours, seconds=30)

    return offset(*BASE, 100, 0), (north, north[::-1], [offset(*BASE, 100, -100), offset(*BASE, 100, 100)]), window


def test_misses_count_by_the_way_their_vehicles_went(make_cfg) -> None:
    """A pothole near the centre line is seen from both lanes: a pass either way that saw nothing is a miss, and
    proves as much as passes going that way find it (Laplace: one unseen miss more). Found on 2 of 2
    northbound passes and 1 of 1 southbound: a northbound miss is 1/3 likely while it is there, a southbound
    one 1/2. A pass across it proves nothing."""
    cfg = make_cfg(aggregate={"repair_chance": 0.01})  # the rule's arithmetic at 1 %
    dsn = cfg.database.resolve_dsn()
    pothole, (north, south, across), window = street_with_a_pothole()

    def seen(dev: str, hours: float, heading: float) -> dict:
        vehicle = {"lat": pothole[0], "lon": pothole[1], "h_accuracy_m": 1.5, "speed_mps": 10.0,
                   "heading_deg": heading}
        return make_event(dev, *pothole, at=window(hours)[0] + timedelta(seconds=15), vehicle=vehicle)

    def chance() -> float:
        with psycopg.connect(dsn) as conn:
            return repair_odds.chances(conn, [defects(cfg)[0][0]], cfg.aggregate)[defects(cfg)[0][0]]

    store(cfg, [seen("veh-a", 0, 0.0), seen("veh-b", 1, 0.0), seen("veh-c", 2, 180.0)])
    assert defects(cfg)[0][3:] == ("confirmed", 3, 3, 3, 0)
    store(cfg, coverage=[make_coverage("veh-d", north, *window(3)), make_coverage("veh-e", south, *window(4)),
                         make_coverage("veh-f", across, *window(5))])
    assert defects(cfg)[0][7] == 2
    assert chance() == pytest.approx(1 / 3 * 1 / 2)
    for hours, (dev, line) in enumerate([("veh-g", north), ("veh-h", north)], start=6):
        store(cfg, coverage=[make_coverage(dev, line, *window(hours))])
    assert chance() == pytest.approx(1 / 54) and defects(cfg)[0][3] == "confirmed"  # 1.9 %: not yet
    store(cfg, coverage=[make_coverage("veh-i", south, *window(8))])
    assert chance() == pytest.approx(1 / 108) and defects(cfg)[0][3] == "likely_repaired"


def test_only_passes_the_way_its_vehicles_saw_it_count_as_misses(make_cfg) -> None:
    """The camera looks ahead: a pothole seen by northbound vehicles is in the footprint of southbound passes,
    of a street crossing there and of one 8 m beside it, which cannot see it; only northbound passes over it
    without it are misses. Sightings that carry no heading leave every direction a miss."""
    cfg = make_cfg()
    pothole, (north, south, across), window = street_with_a_pothole()

    for hours, dev in ((0, "veh-a"), (1, "veh-b")):
        store(cfg, [make_event(dev, *pothole, at=window(hours)[0] + timedelta(seconds=15))])
    for hours, (dev, line) in enumerate([("veh-c", south), ("veh-d", across), ("veh-e", south)], start=2):
        store(cfg, coverage=[make_coverage(dev, line, *window(hours))])
    # Northbound, but in the next street over: inside the camera's 14 m footprint, beyond the detector's reach.
    beside = [offset(*p, 0, 8.0) for p in north]
    store(cfg, coverage=[make_coverage("veh-f", beside, *window(4.5), half_width=14.43)])
    assert defects(cfg)[0][3] == "confirmed" and defects(cfg)[0][7] == 0
    store(cfg, coverage=[make_coverage("veh-c", north, *window(5), half_width=14.43)])
    assert defects(cfg)[0][7] == 1
    # Another pothole whose sightings have no heading (a vehicle standing still): the crossing street counts.
    other = offset(*BASE, 1000, 0)
    store(cfg, [make_event("veh-a", *other, at=window(6)[0], vehicle={"lat": other[0] - 0.0001, "lon": other[1],
                                                                       "h_accuracy_m": 1.5, "speed_mps": 0.0})])
    store(cfg, coverage=[make_coverage("veh-d", [offset(*other, 0, -100), offset(*other, 0, 100)], *window(7))])
    assert [row[7] for row in defects(cfg)] == [1, 1]


def test_classes_and_repaired_defects_stay_apart(make_cfg) -> None:
    cfg = make_cfg()
    at = datetime.now(UTC) - timedelta(hours=3)
    store(cfg, [make_event("veh-a", *BASE, at=at), make_event("veh-a", *BASE, at=at, cls="crack")])
    assert len(defects(cfg)) == 2
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        conn.execute("UPDATE defects SET status = 'repaired' WHERE class = 'pothole'")
    store(cfg, [make_event("veh-b", *offset(*BASE, 1, 0), at=at + timedelta(hours=1))])
    rows = defects(cfg)
    assert len(rows) == 3 and [r[3] for r in rows] == ["repaired", "new", "new"]


@pytest.mark.parametrize("batches", ["one batch", "a batch each"])
def test_precise_sightings_within_the_merge_radius_make_one_defect(make_cfg, batches: str) -> None:
    """h_accuracy 0.5 m: the accuracy gate (3 x 0.5 = 1.5 m) is narrower than the merge radius (5 m), so
    the radius alone decides. Sightings at 0, 2 and 4 m are one pothole; one 11 m further on is another."""
    cfg = make_cfg()
    at = datetime.now(UTC) - timedelta(hours=2)
    events = [make_event(f"veh-{i}", *offset(*BASE, north, 0.0), h=0.5, at=at + timedelta(minutes=i), seq=i)
              for i, north in enumerate([0.0, 2.0, 4.0, 15.0])]
    for chunk in ([events] if batches == "one batch" else [[e] for e in events]):
        store(cfg, chunk)
    rows = defects(cfg)
    assert [r[4] for r in rows] == [3, 1], rows
    # the ids run 1, 2: no sighting started a defect that had to be merged away afterwards (a client may
    # already have seen that id)
    assert [r[0] for r in rows] == [1, 2]
    assert metres((rows[0][1], rows[0][2]), offset(*BASE, 2.0, 0.0)) < 0.1  # the mean of 0, 2 and 4 m
    assert metres((rows[1][1], rows[1][2]), offset(*BASE, 15.0, 0.0)) < 0.1


@pytest.mark.parametrize("batches", ["one batch", "a batch each"])
def test_the_accuracy_gate_widens_the_radius_up_to_its_cap(make_cfg, batches: str) -> None:
    """h_accuracy 3 m: the gate is 9 m, so sightings 8 m apart merge; at h 10 m the gate would be 30 m but
    stops at max_gate_m (12 m), so sightings 14 m apart stay two defects."""
    cfg = make_cfg()
    at = datetime.now(UTC) - timedelta(hours=2)
    wide = [make_event("veh-a", *offset(*BASE, north, 0.0), h=3.0, at=at + timedelta(minutes=i), seq=i)
            for i, north in enumerate([0.0, 8.0])]
    capped = [make_event("veh-b", *offset(*BASE, 100.0 + north, 0.0), h=10.0, at=at + timedelta(minutes=i),
                         seq=10 + i) for i, north in enumerate([0.0, 14.0])]
    events = wide + capped
    for chunk in ([events] if batches == "one batch" else [[e] for e in events]):
        store(cfg, chunk)
    assert [r[4] for r in defects(cfg)] == [2, 1, 1]


def test_a_dismissed_defect_absorbs_precise_sightings_within_the_merge_radius(make_cfg) -> None:
    """A dismissed false positive stays dismissed: a later sighting 3 m off (h 0.5 m, gate 1.5 m) joins it on
    insert through the merge radius. (Neighbour merging leaves dismissed defects alone, so only the match on
    insert can do this.)"""
    cfg = make_cfg()
    at = datetime.now(UTC) - timedelta(hours=2)
    store(cfg, [make_event("veh-a", *BASE, h=0.5, at=at)])
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        conn.execute("UPDATE defects SET status = 'dismissed'")
    store(cfg, [make_event("veh-b", *offset(*BASE, 3.0, 0.0), h=0.5, at=at + timedelta(hours=1))])
    rows = defects(cfg)
    assert [(r[3], r[4]) for r in rows] == [("dismissed", 2)], rows


def test_defects_that_settle_within_the_merge_radius_are_merged(make_cfg) -> None:
    """Two precise defects 7 m apart stay two; three more sightings at 4 m join the nearer one (at 7 m) and
    pull it to 4.75 m from the first: within the merge radius, though far outside their accuracy gate, so
    neighbour merging folds it into the first."""
    cfg = make_cfg()
    at = datetime.now(UTC) - timedelta(hours=2)
    store(cfg, [make_event("veh-a", *BASE, h=0.5, at=at),
                make_event("veh-c", *offset(*BASE, 7.0, 0.0), h=0.5, at=at + timedelta(seconds=1), seq=1)])
    assert [r[4] for r in defects(cfg)] == [1, 1]
    for i in range(3):
        store(cfg, [make_event("veh-b", *offset(*BASE, 4.0, 0.0), h=0.5, at=at + timedelta(hours=1, seconds=i),
                               seq=i)])
    rows = defects(cfg)
    assert [(r[0], r[4]) for r in rows] == [(1, 5)], rows
    # the mean of 0, 7, 4, 4, 4 m is 3.8 m; 0 and 7 m lie more than 3 x max(h, 1 m) from it and are left out
    assert metres((rows[0][1], rows[0][2]), offset(*BASE, 4.0, 0.0)) < 0.1


def test_a_merge_keeps_the_defect_a_manager_scheduled_and_the_other_id_redirects_to_it(make_cfg) -> None:
    """As above, but a manager scheduled the second defect: it survives the merge with its status, its history
    and the first defect's history, and the first id answers with a permanent redirect to it (a work order that
    names either id still finds the pothole). A merge once kept the older id and deleted the manager's decision."""
    from fastapi.testclient import TestClient

    from fleet_server.api import create_app
    from tests.server_fixtures import token

    cfg = make_cfg()
    dsn = cfg.database.resolve_dsn()
    at = datetime.now(UTC) - timedelta(hours=2)
    store(cfg, [make_event("veh-a", *BASE, h=0.5, at=at),
                make_event("veh-c", *offset(*BASE, 7.0, 0.0), h=0.5, at=at + timedelta(seconds=1), seq=1)])
    first, second = (r[0] for r in defects(cfg))
    with TestClient(create_app(cfg)) as api:
        manager = {"Authorization": f"Bearer {token(dsn, 'manager', 'crew-planner')}"}
        assert api.patch(f"/api/v1/defects/{first}", headers=manager, json={"status": "confirmed"}).status_code == 200
        scheduled = api.patch(f"/api/v1/defects/{second}", headers=manager,
                              json={"status": "scheduled", "note": "crew booked for Monday"})
        assert scheduled.status_code == 200
        for i in range(3):
            store(cfg, [make_event("veh-b", *offset(*BASE, 4.0, 0.0), h=0.5, at=at + timedelta(hours=1, seconds=i),
                                   seq=i)])
        assert [(r[0], r[3], r[4]) for r in defects(cfg)] == [(second, "scheduled", 5)]

        moved = api.get(f"/api/v1/defects/{first}", headers=manager, follow_redirects=False)
        assert moved.status_code == 308 and moved.headers["location"] == f"/api/v1/defects/{second}"
        assert f"merged into defect {second}" in moved.json()["detail"]
        kept = api.get(f"/api/v1/defects/{first}", headers=manager).json()  # followed
        assert kept["properties"]["id"] == second
        history = [(h["actor"], h["to_status"], h["note"]) for h in kept["history"]]
        assert ("crew-planner", "scheduled", "crew booked for Monday") in history
        assert ("crew-planner", "confirmed", None) in history  # the first defect's history came along
        assert ("aggregator", "scheduled", f"defect {first} (confirmed) merged into this one: the same defect") \
            in history
        # A change sent to the old id lands on the defect it became (308 keeps the method and body).
        done = api.patch(f"/api/v1/defects/{first}", headers=manager, json={"status": "repaired", "note": "filled"})
        assert done.status_code == 200 and done.json()["properties"]["id"] == second
        assert done.json()["properties"]["status"] == "repaired"
        assert api.get("/api/v1/defects/999999", headers=manager).status_code == 404


def test_the_stated_accuracy_counts_passes_not_sightings(make_cfg) -> None:
    """Ten sightings of one pass share its GNSS error: the defect is as accurate as one of them (3 m), not
    3 / sqrt(10) = 0.95 m; two more passes by other vehicles make three independent measurements."""
    cfg = make_cfg()
    at = datetime.now(UTC) - timedelta(hours=3)
    store(cfg, [make_event("veh-a", *BASE, h=3.0, at=at + timedelta(seconds=i), seq=i) for i in range(10)])
    dsn = cfg.database.resolve_dsn()

    def accuracy() -> float:
        return count(dsn, "SELECT h_accuracy_m FROM defects")

    assert accuracy() == pytest.approx(3.0)
    store(cfg, [make_event("veh-b", *BASE, h=3.0, at=at + timedelta(hours=1)),
                make_event("veh-c", *BASE, h=3.0, at=at + timedelta(hours=2))])
    assert accuracy() == pytest.approx(3.0 / math.sqrt(3))
    assert [r[4:7] for r in defects(cfg)] == [(12, 3, 3)]


def test_a_defect_on_the_antimeridian_stays_there(make_cfg) -> None:
    """Sightings 2 m apart on either side of longitude 180 are one pothole near 180 (an arithmetic mean of the
    longitudes once put it at 0, 19,000 km away), and a crack across it is stored with its line (its ends once
    made the line's reach 40,000 km, which PostGIS refused: the event was lost)."""
    cfg = make_cfg()
    dsn = cfg.database.resolve_dsn()
    at = datetime.now(UTC) - timedelta(hours=2)
    store(cfg, [make_event("veh-a", -16.0, 179.99999, h=1.0, at=at),
                make_event("veh-a", -16.0, -179.99999, h=1.0, at=at + timedelta(seconds=100), seq=1)])
    [row] = defects(cfg)
    assert row[4] == 2 and abs(row[1] + 16.0) < 1e-6 and abs(row[2]) > 179.9999, row
    crack = make_event("veh-a", -17.0, 179.999995, h=1.0, at=at, seq=2, cls="crack",
                       size_m={"width": 0.05, "length": 3.0, "orientation_deg": 90.0})
    store(cfg, [crack])
    with psycopg.connect(dsn) as conn:
        lon, line = conn.execute("""SELECT ST_X(geom::geometry), ST_AsText(line::geometry) FROM defects
                                    WHERE class = 'crack'""").fetchone()
        length = conn.execute("SELECT ST_Length(line) FROM defects WHERE class = 'crack'").fetchone()[0]
    assert abs(lon) > 179.9999 and line.startswith("LINESTRING(") and 2.5 < length < 3.5, (lon, line, length)
    assert count(dsn, "SELECT count(*) FROM rejected") == 0


@pytest.mark.parametrize(("first_m", "second_m"), [(23.0, 25.0), (25.0, 23.0)], ids=["northward", "southward"])
def test_a_batch_groups_new_sightings_across_its_grid_cells(make_cfg, caplog, first_m: float,
                                                             second_m: float) -> None:
    """A batch's new sightings are grouped on a grid of max_gate_m (12 m) cells from its first sighting: of two
    sightings 2 m apart across the line 24 m north of it, the second finds the first in the cell beyond the
    line, either way, and joins it as it is created (not by a merge afterwards)."""
    cfg = make_cfg()
    at = datetime.now(UTC) - timedelta(hours=2)
    caplog.set_level(logging.INFO, logger="fleet_server.aggregate")
    store(cfg, [make_event("veh-a", *BASE, h=5.0, at=at),
                make_event("veh-b", *offset(*BASE, first_m, 0.0), h=5.0, at=at + timedelta(seconds=1), seq=1),
                make_event("veh-c", *offset(*BASE, second_m, 0.0), h=5.0, at=at + timedelta(seconds=2), seq=2)])
    assert [r[4] for r in defects(cfg)] == [1, 2]
    assert "merged" not in caplog.text


def test_merging_returns_the_defects_that_remain(make_cfg) -> None:
    """merge_neighbours reports the defects it was given or changed, less those it merged away; the misses of
    the one merged away move to the one kept with the way their passes went."""
    from fleet_server.aggregate import merge_neighbours

    cfg = make_cfg()
    at = datetime.now(UTC) - timedelta(hours=2)
    store(cfg, [make_event("veh-a", *BASE, h=0.5, at=at),
                make_event("veh-c", *offset(*BASE, 7.0, 0.0), h=0.5, at=at + timedelta(seconds=1), seq=1)])
    first, second = (r[0] for r in defects(cfg))
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:  # closer than the radius once 3 m moved
        conn.execute("UPDATE defects SET geom = %s::geography WHERE id = %s",
                     (f"SRID=4326;POINT({offset(*BASE, 4.0, 0.0)[1]} {offset(*BASE, 4.0, 0.0)[0]})", second))
        conn.execute("INSERT INTO defect_misses VALUES (%s, %s, 'veh-c', now(), now(), 180)", (second, uuid7()))
        assert merge_neighbours(conn, {first, second}, cfg.aggregate) == {first}
        assert conn.execute("SELECT count(*) FROM defects").fetchone()[0] == 1
        assert conn.execute("SELECT defect_id, bearing_deg FROM defect_misses").fetchall() == [(first, 180)]


def test_confirmation_needs_two_passes_not_only_two_sightings(make_cfg) -> None:
    """Two sightings a minute apart from one vehicle are one pass: the defect stays new; a second pass (after
    pass_gap_s) confirms it."""
    cfg = make_cfg()
    at = datetime.now(UTC) - timedelta(hours=3)
    store(cfg, [make_event("veh-a", *BASE, at=at, seq=1), make_event("veh-a", *BASE, at=at + timedelta(minutes=1),
                                                                       seq=2)])
    [(_, _, _, status, sightings, _, passes, _)] = defects(cfg)
    assert (status, sightings, passes) == ("new", 2, 1)
    store(cfg, [make_event("veh-a", *BASE, at=at + timedelta(hours=1), seq=3)])
    [(_, _, _, status, sightings, _, passes, _)] = defects(cfg)
    assert (status, sightings, passes) == ("confirmed", 3, 2)


@pytest.mark.parametrize(("aggregate", "flagged_at"), [
    ({"repair_misses": 2, "repair_vehicles": 2, "repair_chance": 0.2}, 2),   # 1/9 <= 0.2 at the second miss
    ({"repair_misses": 3, "repair_vehicles": 2, "repair_chance": 0.2}, 3),   # ...but 3 misses are asked for
    ({"repair_misses": 2, "repair_vehicles": 3, "repair_chance": 0.2}, 3),   # ...or 3 vehicles
    ({"repair_misses": 2, "repair_vehicles": 2, "repair_chance": 0.05}, 3),  # 1/9 too likely, 1/27 not
])
def test_likely_repaired_at_exactly_the_misses_vehicles_and_chance_set(make_cfg, aggregate, flagged_at) -> None:
    """Found on both of 2 northbound passes, then missed by northbound vehicles c, d, e: each miss 1/3 likely
    while it is there. It is flagged at the first miss that meets all three settings."""
    cfg = make_cfg(aggregate=aggregate)
    pothole, (north, _south, _across), window = street_with_a_pothole()
    store(cfg, [make_event(dev, *pothole, at=window(hours)[0] + timedelta(seconds=15))
                for hours, dev in ((0, "veh-a"), (1, "veh-b"))])
    statuses = []
    for k, dev in enumerate(("veh-c", "veh-d", "veh-e"), start=1):
        store(cfg, coverage=[make_coverage(dev, north, *window(1 + k))])
        statuses.append(defects(cfg)[0][3])
    assert statuses == ["confirmed"] * (flagged_at - 1) + ["likely_repaired"] * (4 - flagged_at), statuses
