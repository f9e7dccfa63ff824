"""The fleet simulator (fleet_sim): its parts alone, the map-quality measures on a hand-made case, and one small
run against the real ingest and PostGIS."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from edge_agent.link.flow import FlowControl
from fleet_sim import calibration as cal
from fleet_sim.defects import DAY_S, DefectField
from fleet_sim.detection import Observation, p_detect
from fleet_sim.messages import build_coverage, build_event
from fleet_sim.metrics import MapDefect, Scorer, Snapshot, TruthDefect
from fleet_sim.network import RoadNetwork
from fleet_sim.outbox import Outbox
from fleet_sim.vehicles import FleetParams
from fleet_sim.world import World, WorldParams
from roadmon_contract.geodesy import LocalFrame
from roadmon_contract.validate import errors
from tests.server_fixtures import make_cfg, workers

__all__ = ["make_cfg", "workers"]
EPOCH = datetime(2026, 3, 1, tzinfo=UTC)


def _field(seed: int, days: int = 3) -> list[tuple]:
    net = RoadNetwork.grid(np.random.default_rng(0), 6, 6, 160.0)
    f = DefectField.initial(net, np.random.default_rng(seed))
    for d in range(days):
        f.evolve_day(d)
    return [(d.cls, d.edge, round(d.s, 6), round(d.left, 6), d.appeared, d.repaired) for d in f.defects]


def test_defect_field_is_deterministic_from_its_seed_and_evolves() -> None:
    a, b, c = _field(7), _field(7), _field(8)
    assert a == b
    assert a != c
    assert any(appeared > 0 for _, _, _, _, appeared, _ in a), "no defect appeared during the simulated days"
    assert any(repaired is not None for *_, repaired in a), "no defect was repaired"
    assert {cls for cls, *_ in a} == {"pothole", "crack"}


def test_defects_grow_and_exist_only_between_appearance_and_repair() -> None:
    net = RoadNetwork.grid(np.random.default_rng(0), 6, 6, 160.0)
    f = DefectField.initial(net, np.random.default_rng(3))
    d = next(x for x in f.defects if x.cls == "pothole")
    d.repaired = d.appeared + 10 * DAY_S
    assert d.size_at(d.appeared + 5 * DAY_S)[0] > d.size_at(d.appeared)[0]
    assert d.exists(d.appeared) and not d.exists(d.appeared - 1) and not d.exists(d.repaired)


def test_detection_probability_by_class_and_lateral_distance() -> None:
    params = cal.DetectionParams()
    assert p_detect("pothole", 0.0, params) == pytest.approx(0.98)
    assert p_detect("crack", -1.5, params) == pytest.approx(0.95)
    assert p_detect("pothole", 3.0, params) == pytest.approx(0.49)   # half way from 1.5 m to 4.5 m
    assert p_detect("pothole", 4.5, params) == 0.0
    assert p_detect("manhole", 0.0, params) == 0.0


def test_detection_rate_over_many_passes_matches_the_model() -> None:
    """Measured over a simulated fleet: the share of in-lane pothole passes that produced a sighting."""
    world = World(WorldParams(seed=4, vehicles=60, grid=(8, 8),
                              detection=replace(cal.DetectionParams(), fp_per_km=(), confusion_per_pothole=0.0)),
                  EPOCH)
    for day in range(3):
        world.day(day)
    assert world.truth.detections, "nothing was detected"
    assert all(t is not None for t in world.truth.detections.values()), "false events although switched off"
    lanes = {d.id: d for d in world.field.defects if d.cls == "pothole" and abs(d.left) < 0.25}
    passes = sum(1 for did, t, _ in world.truth.defect_passes if did in lanes and lanes[did].exists(t))
    seen = sum(1 for did in world.truth.detections.values() if did in lanes)
    # |left| < 0.25 m: 1.5-2 m beside either direction's path, where the model gives 0.98 down to 0.82.
    assert passes > 50
    assert 0.8 <= seen / passes <= 0.99


def _obs(cls: str, orientation: float | None) -> Observation:
    return Observation(None, cls, 3600.5, 10.0, -20.0, 2.7, 0.8, 1.9, orientation, 0.55, 14, 8.0, -24.0, 11.0,
                       359.99)


def test_messages_validate_against_the_contract_schemas() -> None:
    frame = LocalFrame(48.137, 11.575)
    pothole = build_event(_obs("pothole", None), device_id="fsim-0001", seq=1, frame=frame, epoch=EPOCH)
    crack = build_event(_obs("crack", 179.96), device_id="fsim-0001", seq=2, frame=frame, epoch=EPOCH)
    cov = build_coverage("fsim-0001", [(0.0, 0.0, 0.0), (2.0, 20.0, 0.0), (4.0, 40.0, 1.0)], frame, EPOCH)
    assert errors("event", pothole) == []
    assert errors("event", crack) == []
    assert errors("coverage", cov) == []
    assert pothole["captured_at"] == "2026-03-01T01:00:00.500Z"
    assert "orientation_deg" not in pothole["size_m"]
    assert 0 <= crack["size_m"]["orientation_deg"] <= 180
    assert cov["footprint_m"]["half_width"] == cal.FOOTPRINT_M["half_width"]
    assert pothole["severity"] == round(math.sqrt(0.8 * 1.9), 3) or pothole["severity"] == 1.0


def test_outbox_resends_until_acked() -> None:
    box = Outbox(FlowControl(max_window=2, min_timeout_s=10.0, max_timeout_s=100.0))
    for i in range(3):
        box.add("event", f"e{i}", {"n": i})
    assert [m[0] for m in box.due(0.0)] == ["e0", "e1"]          # the window
    box.ack({"event_ids": ["e0"], "coverage_ids": []}, now=1.0)     # acked after 1 s: srtt 1, rttvar 0.5
    assert box.flow.srtt == 1.0 and box.flow.timeout_s == 10.0      # 1 + 4 * 0.5 < the 10 s minimum
    assert [m[0] for m in box.due(6.0)] == ["e2"]
    assert [m[0] for m in box.due(10.0)] == ["e1"]                  # no ack within the timeout: again
    assert box.resent == 1 and box.flow.timeout_s == 20.0           # ... and the next wait is doubled
    assert box.due(25.0) == []                                      # e2 (sent at 6) is not overdue at 20 s
    box.ack({"event_ids": ["e1"], "coverage_ids": [], "rejected": [{"id": "e2", "reason": "bad"}]})
    assert len(box) == 0 and box.confirmed == 2 and box.rejected == 1


def _hand_made() -> Scorer:
    truths = [TruthDefect(0, "pothole", 0, 0, 0, 0, appeared=0),          # A: found twice
              TruthDefect(1, "pothole", 100, 0, 100, 0, appeared=0),      # B: missed
              TruthDefect(2, "crack", 200, 0, 210, 0, appeared=0),        # C: a 10 m crack as two defects
              TruthDefect(3, "pothole", 300, 0, 300, 0, appeared=0, repaired=50),   # D: repaired, flagged
              TruthDefect(4, "pothole", 400, 0, 400, 0, appeared=0)]      # E: flagged although it is there
    before = Snapshot(40, [MapDefect(6, "pothole", "new", 300.5, 0), MapDefect(7, "pothole", "confirmed", 400, 0.5)])
    after = Snapshot(200, [MapDefect(1, "pothole", "confirmed", 1, 0), MapDefect(2, "pothole", "new", 0, 3),
                           MapDefect(3, "pothole", "new", 150, 0), MapDefect(4, "crack", "confirmed", 205, 2, 9.0),
                           MapDefect(5, "crack", "new", 208, 1.5), MapDefect(6, "pothole", "likely_repaired", 300.5, 0),
                           MapDefect(7, "pothole", "likely_repaired", 400, 0.5)])
    passes = [(i, 10.0, 0) for i in range(5)] + [(3, 60.0, 1), (3, 70.0, 2), (3, 80.0, 1)]
    return Scorer(truths, [before, after], passes, street_passes=[(0, 10.0)], map_street={i: 0 for i in range(1, 8)})


def test_map_quality_measures_on_a_hand_made_case() -> None:
    s = _hand_made()
    k1 = s.k_passes(range(1, 3))[0]
    assert k1["defects"] == 4                      # A, B, C, E (D was repaired before the snapshot)
    assert k1["recall"] == 0.5                     # A and C; E is shown as likely_repaired, so not on the map
    assert k1["recall_confirmed"] == 0.5
    assert k1["duplicates"] == 1.0                 # both found defects have two map defects
    assert k1["median_error_m"] == pytest.approx(1.25)   # A: 1.0 m, C: 1.5 m from its line
    assert k1["precision"] == pytest.approx(0.8)   # 4 of 5 shown map defects are real (3 is not)
    assert k1["precision_confirmed"] == 1.0
    assert s.k_passes(range(1, 3))[1]["defects"] == 0  # nothing was passed twice
    rep = s.repairs()
    assert rep["repaired_on_map"] == 1 and rep["flagged"] == 1
    assert rep["median_passes"] == 3 and rep["median_days"] == pytest.approx(150 / 86400)
    assert rep["eligible_3_passes_2_vehicles"] == 1 and rep["flagged_within"] == 1.0
    assert rep["false_likely_repaired"] == 1 and rep["mapped"] == 4 and rep["false_rate"] == 0.25
    assert rep["false_likely_repaired_ids"] == [7]  # the map's id of E, to read its history
    lc = s.long_cracks()
    assert (lc["long_cracks"], lc["one_defect"], lc["several"]) == (1, 0, 1)
    conf = s.confirmation({0: 10.0, 2: 10.0})
    assert conf["confirmed"] == 2 and conf["median_h"] == pytest.approx(190 / 3600)


@pytest.mark.services
def test_small_fleet_against_the_real_server(make_cfg, workers, mqtt_device) -> None:
    """Three vehicles drive a small town for three days through the real broker, ingest and PostGIS; with a
    fixed seed the map's figures are exact."""
    from fleet_sim.runner import Runner

    detection = replace(cal.DetectionParams(), fp_per_km=(), confusion_per_pothole=0.0)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = 3
    world = World(WorldParams(seed=5, vehicles=3, grid=(4, 4), detection=detection,
                              fleet=FleetParams(route_km=(4.0, 5.0), works_per_week=7.0),
                              device_prefix="fsimt"), today - timedelta(days=days))
    creds = dict(mqtt_device(d) for d in world.device_ids)
    cfg = make_cfg(devices=world.device_ids)
    workers(cfg, 1)
    runner = Runner(world, cfg.mqtt.host, cfg.mqtt.port, creds, cfg.database.resolve_dsn(), step_s=3 * 3600.0)
    stats = runner.run(days, progress=False)
    assert stats.unacked == 0 and stats.rejected == 0
    assert stats.events > 20 and stats.coverage > 20
    k3 = runner.scorer().k_passes(range(3, 4))[0]
    # Seed 5: ten defects passed three times; one lies in the far lane of the only direction driven that day.
    assert k3["defects"] == 10
    assert k3["recall"] == 0.9
    assert k3["duplicates"] == 0.0
    assert k3["recall_confirmed"] == 0.8


def test_bench_fleet_server_settings_reach_the_server_config(tmp_path):
    import tomllib

    from bench.bench_fleet import server_config
    from bench.common import parse_settings
    from fleet_server.config import ServerConfig

    settings = parse_settings(["aggregate.repair_chance=0.005", "ingest.batch_size = 200"])
    info = {"mqtt_host": "127.0.0.1", "mqtt_port": 1883, "server_user": "srv", "server_password": "pw"}
    cfg = tomllib.loads(server_config(tmp_path, "postgresql://x", info, settings).read_text())
    assert cfg["aggregate"] == {"repair_chance": 0.005, "detection_curve_refresh_s": 1.0}  # the bench's own, kept
    assert cfg["ingest"]["batch_size"] == 200 and cfg["ingest"]["share_group"].startswith("fleetbench")
    ServerConfig.model_validate(cfg)  # what the server will read
    with pytest.raises(ValueError, match=r"SECTION\.KEY=VALUE"):
        parse_settings(["repair_chance=0.005"])


def test_map_bounds_judges_a_miss_by_each_rule():
    """bench_map_bounds: the oracle uses the pass's true chance, per-way the way's record with one unseen miss,
    lateral the chance blended with the record; a way that never found the pothole proves nothing."""
    from bench.bench_map_bounds import LATERAL_WEIGHT, PotholePass, miss_factor

    history = [PotholePass(0, 1, True, 0.9, True, 1.0), PotholePass(10, 2, True, 0.9, True, 1.0),
               PotholePass(20, 3, True, 0.9, False, 1.0), PotholePass(30, 4, False, 0.3, False, 1.0)]
    north = PotholePass(40, 5, True, 0.9, False, 1.0)
    south = PotholePass(50, 6, False, 0.3, False, 1.0)
    assert miss_factor("oracle", history, north) == pytest.approx(0.1)
    assert miss_factor("oracle", history, south) == pytest.approx(0.7)
    assert miss_factor("per-way", history, north) == pytest.approx(1 - 2 / 4)
    assert miss_factor("per-way", history, south) == 1.0
    assert miss_factor("lateral", history, north) == pytest.approx(
        1 - (LATERAL_WEIGHT * 0.9 + 2) / (LATERAL_WEIGHT + 3))
    assert miss_factor("lateral", history, south) == 1.0
