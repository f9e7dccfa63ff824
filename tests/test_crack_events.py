"""Cracks through the whole agent pipeline, without waiting for a model that finds them: a rendered drive is
replayed with the simulator's own boxes as the detections (edge_agent.lab.sim.truth_detector: real `Detection`s,
pothole and crack), so what is judged is the tracker, the crack geometry (edge_agent.perception.geolocate: a line, not a
blob) and the events."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent import config as agent_config
from edge_agent.lab.drive_eval import TruthTrack, crack_truth, score_by_class, without_gnss_error
from edge_agent.lab.sim.drive import drive_camera
from edge_agent.lab.sim.truth_detector import TruthDetector
from edge_agent.perception.geolocate import Geolocator
from edge_agent.runtime.assemble import build_agent
from edge_agent.runtime.replay import replay_drive
from roadmon_contract.geodesy import distance_m
from roadmon_contract.validate import errors


@pytest.fixture(scope="module")
def drive(seed7_drive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The seed-7 drive (tests/conftest.py: 45 s, 10 potholes and 5 cracks, 3 m GNSS noise; the one
    test_acceptance_drive replays with the bundled model) replayed with the simulator's own boxes."""
    out = seed7_drive
    cfg = agent_config.load(out / "agent.toml")
    with build_agent(cfg, outbox=tmp_path_factory.mktemp("cracks") / "outbox.db",
                     detector=TruthDetector(out / "boxes.csv")) as agent:
        replay_drive(agent, out / "video.mp4", out / "drive.nmea")
        events = [event for _, event in agent.outbox.iter_events()]
    return out, events


def test_each_crack_is_one_crack_event_in_place(drive: tuple[Path, list[dict]]) -> None:
    out, events = drive
    assert all(errors("event", e) == [] for e in events)
    camera = without_gnss_error(events, TruthTrack(out / "truth.csv"))
    scores = score_by_class(camera, out / "defects.geojson")
    assert scores["crack"].defects == 5 and scores["pothole"].defects == 10
    for cls, result in scores.items():
        assert result.precision == 1.0 and result.recall == 1.0, (cls, result)
        assert result.median_error_m is not None and result.median_error_m <= 2.0, (cls, result)
    assert all("orientation_deg" not in e["size_m"] for e in events if e["class"] == "pothole")


def test_a_crack_event_measures_a_line(drive: tuple[Path, list[dict]]) -> None:
    """Length along the crack's long axis, width across it, orientation of that axis, against the simulator's
    principal axis of the drawn crack; alligator patches (about as wide as long) are areas and only checked for
    length."""
    out, events = drive
    truth = crack_truth(out / "defects.geojson")
    camera = without_gnss_error([e for e in events if e["class"] == "crack"], TruthTrack(out / "truth.csv"))
    lines = 0
    for event in camera:
        lat, lon = event["position"]["lat"], event["position"]["lon"]
        crack = min(truth, key=lambda c: distance_m(lat, lon, c["lat"], c["lon"]))
        size = event["size_m"]
        assert 0.6 <= size["length"] / crack["length_m"] <= 1.4, (size, crack)
        if crack["width_m"] < 0.5 * crack["length_m"]:
            lines += 1
            assert size["width"] < 0.5 * size["length"], (size, crack)
            turn = abs(size["orientation_deg"] - crack["orientation_deg"]) % 180.0
            assert min(turn, 180.0 - turn) <= 20.0, (size, crack)
    assert lines >= 3


def test_without_the_image_a_crack_keeps_its_box_diagonal() -> None:
    geo = Geolocator(drive_camera(640, 360))
    box = geo.ground_box((300, 250, 360, 280))
    assert box is not None
    line = geo.line_box(box, None, (300, 250, 360, 280))
    assert line.axis_deg is None
    assert math.isclose(line.length_m, math.hypot(box.length_m, box.width_m))
    assert line.width_m == min(box.length_m, box.width_m)
    # A plain road has no strokes to measure: the same fallback, not a made-up line.
    grey = np.full((360, 640, 3), 110, np.uint8)
    assert geo.line_box(box, grey, (300, 250, 360, 280)).axis_deg is None


def test_a_net_of_cells_is_an_area_and_a_stroke_is_a_line() -> None:
    """Alligator cracking, most of the real survey frames' cracks, had its principal axis taken as a line: an
    arbitrary diagonal across the lane on the map. A net of strokes about as wide as long is an area (no
    orientation, measured along and across the road); one stroke stays a line."""
    geo = Geolocator(drive_camera(640, 360))
    bbox = (260, 240, 380, 300)
    box = geo.ground_box(bbox)
    net = np.full((360, 640, 3), 110, np.uint8)
    for x in range(265, 380, 14):
        cv2.line(net, (x, 242), (x + 4, 298), (60, 60, 60), 1)
    for y in range(244, 300, 8):
        cv2.line(net, (262, y), (378, y + 2), (60, 60, 60), 1)
    area = geo.line_box(box, net, bbox)
    assert area.area and area.axis_deg is None and area.length_m > 0.3 and area.width_m > 0.3
    stroke = np.full((360, 640, 3), 110, np.uint8)
    cv2.line(stroke, (265, 295), (375, 245), (60, 60, 60), 2)
    line = geo.line_box(box, stroke, bbox)
    assert not line.area and line.axis_deg is not None and line.width_m < 0.3 * line.length_m
    pose = type("Pose", (), {"lat": 48.1, "lon": 11.5, "h_std_m": 0.5})()
    assert Geolocator.combine([(area, pose, 0.0), (area, pose, 0.0), (line, pose, 0.0)]).orientation_deg is None
    assert Geolocator.combine([(area, pose, 0.0), (line, pose, 0.0), (line, pose, 0.0)]).orientation_deg is not None


class RenamedTruth(TruthDetector):
    """The simulator's boxes under a customer model's names: "crack" is called "Longitudinal crack"."""

    NAMES = ("pothole", "Longitudinal crack")

    def __init__(self, boxes_csv: Path) -> None:
        super().__init__(boxes_csv)
        self.info = dataclasses.replace(self.info, classes=self.NAMES)

    def detect(self, image: np.ndarray) -> list:
        return [dataclasses.replace(d, class_name=self.NAMES[d.class_id]) for d in super().detect(image)]


@pytest.mark.parametrize("line_classes", [None, ["longitudinal crack"]])
def test_a_models_own_crack_name_is_a_line_once_configured(drive: tuple[Path, list[dict]], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture, line_classes) -> None:
    # A customer's model with its own names: without tracker.line_classes its cracks were measured as blobs,
    # and nothing said so.
    out, _ = drive
    cfg = agent_config.load(out / "agent.toml")
    if line_classes:
        cfg = cfg.model_copy(update={"tracker": cfg.tracker.model_copy(update={"line_classes": line_classes})})
    with build_agent(cfg, outbox=tmp_path / "outbox.db", detector=RenamedTruth(out / "boxes.csv")) as agent:
        replay_drive(agent, out / "video.mp4", out / "drive.nmea")
        cracks = [e for _, e in agent.outbox.iter_events() if e["class"] == "Longitudinal crack"]
    assert len(cracks) >= 4
    warned = [r.getMessage() for r in caplog.records if "not in tracker.line_classes" in r.getMessage()]
    if line_classes:  # lines get an orientation; alligator patches are areas (test_a_net_of_cells_is_an_area)
        lines = [e for e in cracks if "orientation_deg" in e["size_m"]]
        assert len(lines) >= 3 and not warned
        assert all(e["size_m"]["width"] >= 0.4 * e["size_m"]["length"] for e in cracks if e not in lines)
    else:
        assert not any("orientation_deg" in e["size_m"] for e in cracks)
        assert any("'Longitudinal crack'" in w for w in warned)
