"""An outside review of `finds_nothing` (fleet_server/blind_boxes.py) on a real PostGIS: healthy boxes that must
not be named, the misses of a box once named, and the words a technician reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleet_server import repair_odds
from fleet_server.config import ServerConfig
from tests.server_fixtures import make_cfg, make_coverage, make_event, offset, store
from tests.test_blind_boxes import judged

pytestmark = pytest.mark.services

__all__ = ["make_cfg"]
BASE = (48.137, 11.575)
START = datetime.now(UTC) - timedelta(days=2)


def street(east_m: float) -> list[tuple[float, float]]:
    return [offset(*BASE, 0, east_m), offset(*BASE, 700, east_m)]


def potholes(east_m: float) -> list[tuple[float, float]]:
    return [offset(*BASE, 100.0 * (i + 1), east_m) for i in range(6)]


def drive(cfg: ServerConfig, device: str, hour: float, finds: bool, east_m: float = 0.0,
          beside_m: float = 0.0) -> None:
    """One northbound minute up the street EAST_M metres east of BASE, past its six potholes, which lie BESIDE_M
    east of the vehicle's path (the kerb); events of each when the box FINDS them."""
    t0 = START + timedelta(hours=hour)
    events = []
    for i, (lat, lon) in enumerate(potholes(east_m + beside_m)):
        vlat, vlon = offset(lat, lon, -11.0, -beside_m)
        events.append(make_event(device, lat, lon, at=t0 + timedelta(seconds=8 * (i + 1)),
                                 vehicle={"lat": vlat, "lon": vlon, "h_accuracy_m": 1.5, "speed_mps": 10.0,
                                          "heading_deg": 0.0}))
    store(cfg, events if finds else [], [make_coverage(device, street(east_m), t0, t0 + timedelta(seconds=60))])


def name_blind_box(cfg: ServerConfig) -> None:
    """veh-z passes the six potholes five times and finds none; veh-a and veh-b find them after each pass."""
    drive(cfg, "veh-a", 0, finds=True)
    for k in range(5):
        drive(cfg, "veh-z", 1 + 2 * k, finds=False)
        drive(cfg, "veh-b" if k % 2 else "veh-a", 2 + 2 * k, finds=True)
    assert "finds_nothing" in judged(cfg)["veh-z"]["problem_codes"]


def chances(cfg: ServerConfig) -> set[float]:
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM defects WHERE ST_X(geom::geometry) < %s",
                                          (BASE[1] + 0.001,))]
        return set(repair_odds.chances(conn, ids, cfg.aggregate).values())


def test_a_box_whose_route_has_only_hard_to_see_defects_is_judged_by_their_rate(make_cfg) -> None:
    """The fleet finds the potholes in the wheel path of street A on every pass, the kerb potholes of street B
    (3 m beside the path) one pass in three. veh-h drives street B only and finds as the fleet finds there: it
    found them all once, then three passes found nothing. A box finding half of what the fleet finds on street B
    misses 18 there in a row one time in 11 ((1 - 0.25 / 2) ** 18): no evidence. Judged by the fleet's pooled
    rate (78 %, the wheel paths) it was named."""
    cfg = make_cfg(aggregate={"offset_bin_min_passes": 5})
    for k in range(20):
        drive(cfg, "veh-a" if k % 2 else "veh-b", k, finds=True)
    drive(cfg, "veh-h", 0.2, finds=True, east_m=1000, beside_m=3)
    for k in range(9):
        drive(cfg, "veh-b" if k % 2 else "veh-a", 0.5 + k, finds=k % 3 == 2, east_m=1000, beside_m=3)
    for k in range(3):
        drive(cfg, "veh-h", 10.5 + k, finds=False, east_m=1000, beside_m=3)
    drive(cfg, "veh-a", 13.5, finds=True, east_m=1000, beside_m=3)
    rows = judged(cfg)
    with psycopg.connect(cfg.database.resolve_dsn()) as conn:
        curve = dict(((c, b), (f, n)) for c, b, f, n in conn.execute(
            "SELECT class, offset_bin, found, passes FROM detection_by_offset"))
    assert curve[("pothole", 5)][0] / curve[("pothole", 5)][1] < 0.35, curve  # the kerb: a pass in three or four
    assert rows["veh-h"]["problem_codes"] == [], rows["veh-h"]["problems"]


def test_a_named_box_revoked_leaves_its_blind_misses_proving_nothing(make_cfg) -> None:
    """veh-z, named, passes the potholes three more times after their last sighting. Revoking it (the technician
    takes the blind box out) must not turn those blind misses into evidence that the potholes were repaired."""
    cfg = make_cfg(aggregate={"offset_bin_min_passes": 5})
    name_blind_box(cfg)
    for k in range(3):
        drive(cfg, "veh-z", 12 + k, finds=False)
    assert chances(cfg) == {1.0}
    with psycopg.connect(cfg.database.resolve_dsn(), autocommit=True) as conn:
        conn.execute("UPDATE devices SET revoked_at = now() WHERE id = 'veh-z'")
    assert judged(cfg)["veh-z"]["problem_codes"] == []  # a withdrawn box is no one's to fix
    assert chances(cfg) == {1.0}


def test_a_named_box_fixed_leaves_its_blind_misses_proving_nothing(make_cfg) -> None:
    """The same after the fix: veh-z's windscreen cleaned, it finds the potholes of another street that veh-a
    found too (a finding is a defect another vehicle saw as well). Its misses of the first street's potholes from
    while it was blind still prove nothing."""
    cfg = make_cfg(aggregate={"offset_bin_min_passes": 5})
    name_blind_box(cfg)
    for k in range(3):
        drive(cfg, "veh-z", 12 + k, finds=False)
    assert chances(cfg) == {1.0}
    drive(cfg, "veh-a", 15.5, finds=True, east_m=2000)
    drive(cfg, "veh-z", 16, finds=True, east_m=2000)
    assert judged(cfg)["veh-z"]["problem_codes"] == []
    assert chances(cfg) == {1.0}


def test_the_words_say_over_what_time_the_box_missed(make_cfg) -> None:
    """veh-z's misses span 8 hours of the last 2 days; the words said "30 times in 7 days", which reads as a
    week of blindness. They name the first miss instead, and say the box found nothing within the window."""
    cfg = make_cfg(aggregate={"offset_bin_min_passes": 5})
    name_blind_box(cfg)
    [words] = judged(cfg)["veh-z"]["problems"]
    assert "in 7 days" not in words, words
    assert "since " in words and "UTC" in words, words
