"""What the server says of a box from its last status (fleet_server.device_view): defects it could not place only
while that is recent and with the reason, a clock that is off without blaming findings GNSS dated, long offsets
in days; what the agent sends for it (last_unplaced); and the metrics over a database outage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edge_agent.config import AgentConfig
from edge_agent.perception.geolocate import Geolocator
from fleet_server.device_view import coded_problems, problems
from fleet_server.metrics import DeviceCollector
from roadmon_contract.validate import errors

NOW = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def status(**fields: object) -> dict:
    return {"state": "online", "sent_at": iso(NOW), **fields}


def test_defects_without_a_position_are_a_problem_while_recent_and_say_why() -> None:
    """The count is the agent's since it started: "43 defects seen without a usable position" stood for hours
    after the receiver was back, and with GNSS ok but 98 m uncertain nothing said why."""
    why = "position too uncertain (98 m, events.max_pose_h_std_m 10)"
    recent = status(counters={"events_no_fix": 43}, last_unplaced={"at": iso(NOW - timedelta(minutes=4)), "why": why})
    assert errors("status", recent) == []
    assert problems(recent, NOW, None) == [f"43 defects seen without a usable position since the agent started, "
                                           f"the last 4 min before its status: {why}"]
    old = status(counters={"events_no_fix": 43}, last_unplaced={"at": iso(NOW - timedelta(minutes=11)), "why": why})
    assert problems(old, NOW, None) == []
    older_agent = status(counters={"events_no_fix": 2})  # no last_unplaced: judged on its count, as before
    assert coded_problems(older_agent, NOW, None) == [
        ("unplaced", "2 defects seen without a usable position since the agent started")]


def test_the_geolocator_says_why_a_pose_cannot_place_a_defect() -> None:
    geo = Geolocator(AgentConfig().events)

    class Pose:
        def __init__(self, lat: float | None, h_std_m: float = 2.0, state: str = "ok") -> None:
            self.lat, self.lon, self.h_std_m, self.state = lat, 11.0, h_std_m, state

    assert geo.unplaceable_why(None) == "no GNSS fix"
    assert geo.unplaceable_why(Pose(None)) == "no GNSS fix"
    assert geo.unplaceable_why(Pose(48.0, state="stale")).startswith("no GNSS fix for a while")
    assert geo.unplaceable_why(Pose(48.0, h_std_m=98.0)).startswith("position too uncertain (98 m")
    assert geo.unplaceable_why(Pose(48.0)) is None and geo.placeable(Pose(48.0))


def test_a_clock_that_is_off_blames_the_findings_only_when_gnss_does_not_date_them() -> None:
    """Boxes 3 h behind, 40 days behind and 2 days ahead all read "its findings are dated wrongly" while every
    captured_at was GNSS time; only a receiver without dates (GGA only) leaves the findings on the box's clock."""
    behind = status(sent_at=iso(NOW - timedelta(hours=3)), clock_offset_vs_gnss_s=-10800.0)
    [(code, words)] = coded_problems(behind, NOW, None)
    assert code == "clock" and words.startswith("clock 3.0 h behind") and "dated by GNSS and are right" in words
    undated = status(sent_at=iso(NOW - timedelta(days=40)))
    [(_, words)] = coded_problems(undated, NOW, None)
    assert words.startswith("clock 40.0 days behind") and "dated wrongly" in words


def test_a_status_with_odd_health_values_names_no_problem_of_them_and_breaks_nothing() -> None:
    """{"camera": {"a": 1}} in one box's health took the devices API, /metrics and `device ls` down (unhashable),
    and revoking the box did not bring them back; any part name became a problem code and a metric label; a
    video file that ended (the demo's box) read as a camera fault."""
    odd = status(health={"camera": {"a": 1}, "gnss": [1], "lidar": "<img>", "Camera ": "x", "detector": "failed"},
                 counters={"events_no_fix": True})
    assert errors("status", odd) != []  # the server refuses such a status now
    assert coded_problems(odd, NOW, None) == [("detector", "detector fails: nothing is detected")]
    assert problems(status(health={"camera": "ended", "gnss": "ok"}), NOW, None) == []


def test_device_figures_outlive_a_database_outage() -> None:
    """With PostGIS away the device series vanished, so every RoadDeviceProblem resolved during the outage and
    paged again 15 minutes after it; now the last rows read are exported, with their age."""
    now = datetime.now(UTC)
    blind = {"misses": 30, "defects": 6, "fleet_rate": 0.5, "days": 7.0, "judged_at": now.isoformat()}
    row = ("online", 3, 40.0, now, None, "veh-cam", {"health": {"camera": "frozen"}}, now, None, None, blind)
    database_up = True

    def fetch(sql: str) -> list[tuple]:
        if not database_up:
            raise OSError("connection refused")
        return [] if "rejected" in sql else [row]

    def scrape(collector: DeviceCollector) -> dict:
        return {(m.name, tuple(sorted(s.labels.items()))): s.value for m in collector.collect() for s in m.samples}

    assert scrape(DeviceCollector(lambda sql: (_ for _ in ()).throw(OSError("down")), 600.0)) == {}
    collector = DeviceCollector(fetch, 600.0)
    before = scrape(collector)
    assert before[("road_device_problems", (("device", "veh-cam"), ("problem", "camera")))] == 1.0
    assert before[("road_device_problems", (("device", "veh-cam"), ("problem", "finds_nothing")))] == 1.0
    assert before[("road_device_metrics_age_seconds", ())] == 0.0
    database_up = False
    during = scrape(collector)
    assert during.pop(("road_device_metrics_age_seconds", ())) > 0
    before.pop(("road_device_metrics_age_seconds", ()))
    assert during == before
