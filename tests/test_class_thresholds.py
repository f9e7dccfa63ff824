"""Per-class working thresholds: the manifest's class_thresholds, the operator's overrides, and who uses them
(the detector's cut, `model eval`'s P/R/F1, the tracker's confirmation)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.config.detector import DetectorConfig
from edge_agent.config.tracker import TrackerConfig
from edge_agent.detect.detector import load_detector
from edge_agent.gnss.motion import Motion
from edge_agent.lab.evaluate import ClassRecord, summarize
from edge_agent.perception.geolocate import Geolocator
from edge_agent.perception.tracker import Tracker
from tests.test_tracker import FPS, H, W, detections_for, projector  # noqa: F401 (fixture)

SIZE = 64


def two_class_model(path, pothole: float, crack: float) -> str:
    """A real YOLOv8-layout ONNX model [1, 6, A]: one pothole box scored `pothole`, one crack box `crack`."""
    anchors = sum((SIZE // s) ** 2 for s in (8, 16, 32))
    const = np.zeros((1, 6, anchors), np.float32)
    const[0, :4, 0] = [16, 16, 12, 12]
    const[0, 4, 0] = pothole
    const[0, :4, 1] = [44, 44, 20, 8]
    const[0, 5, 1] = crack
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, anchors])
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"]), helper.make_node("Add", ["c", "z"], ["output0"])]
    inits = [numpy_helper.from_array(const, "c"), numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    model = helper.make_model(helper.make_graph(nodes, "two", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"names": "{0: 'pothole', 1: 'crack'}", "imgsz": f"[{SIZE}, {SIZE}]"})
    path.write_bytes(model.SerializeToString())
    return str(path)


@pytest.fixture
def model(tmp_path) -> str:
    path = two_class_model(tmp_path / "m.onnx", pothole=0.4, crack=0.25)
    (tmp_path / "m.manifest.json").write_text(json.dumps({"class_thresholds": {"pothole": 0.5, "crack": 0.2}}))
    return path


def classes_found(cfg: DetectorConfig) -> list[str]:
    det = load_detector(cfg)
    return sorted(d.class_name for d in det.detect(np.full((SIZE, SIZE, 3), 100, np.uint8)))


def test_each_class_is_cut_at_its_manifest_threshold(model):
    det = load_detector(DetectorConfig(model=model))
    assert det.thresholds == (0.5, 0.2)
    assert det.threshold_for(1) == 0.2 and det.threshold_for(7) == 0.35  # unknown ids: score_threshold
    assert classes_found(DetectorConfig(model=model)) == ["crack"]  # pothole 0.40 < 0.5, crack 0.25 >= 0.2


def test_the_operators_settings_win_over_the_manifest(model):
    # A score_threshold set in the config applies to every class the config does not name.
    assert classes_found(DetectorConfig(model=model, score_threshold=0.3)) == ["pothole"]
    assert classes_found(DetectorConfig(model=model, score_threshold=0.1)) == ["crack", "pothole"]
    assert classes_found(DetectorConfig(model=model, class_thresholds={"crack": 0.3})) == []
    assert classes_found(DetectorConfig(model=model, class_thresholds={"pothole": 0.4})) == ["crack", "pothole"]


def test_a_model_without_class_thresholds_uses_score_threshold(tmp_path):
    path = two_class_model(tmp_path / "plain.onnx", pothole=0.4, crack=0.25)
    assert load_detector(DetectorConfig(model=path)).thresholds == (0.35, 0.35)
    assert classes_found(DetectorConfig(model=path)) == ["pothole"]


def test_class_thresholds_out_of_range_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"class thresholds must lie in 0\.\.1"):
        DetectorConfig(class_thresholds={"crack": 1.5})


def test_pr_at_each_class_threshold():
    rec = ClassRecord(scores=[0.9, 0.3, 0.2], tp=[True, True, False], n_gt=2)
    one = summarize({0: rec, 1: rec}, {0: 0.5, 1: 0.25})
    assert (one[0].precision, one[0].recall) == (1.0, 0.5)  # only 0.9 kept
    assert (one[1].precision, one[1].recall) == (1.0, 1.0)  # 0.9 and 0.3 kept
    assert one[0].ap50 == one[1].ap50  # AP does not depend on the threshold


def test_the_tracker_confirms_each_class_at_its_own_score(projector):  # noqa: F811 (fixture)
    """A crack scored ~0.25 in every frame: below the default confirm_score 0.4, above crack's own 0.2."""

    def confirmed(confirm_scores):
        rng = np.random.default_rng(3)
        tracker = Tracker(TrackerConfig(), Geolocator(projector), confirm_scores=confirm_scores)
        pos, image, found = np.zeros(2), np.zeros((H, W, 3), np.uint8), []
        for k in range(int(3 * FPS)):
            dets = [d.__class__(d.x1, d.y1, d.x2, d.y2, d.score, 1, "crack")
                    for d in detections_for(projector, [(0.0, 15.0, 1.0)], pos, 0.0, rng, miss=0.0, score=0.25)]
            found += tracker.step(k / FPS, dets, Motion(12.0 / FPS, 0.0), image=image)
            pos = pos + np.array([0.0, 12.0 / FPS])
        return [t.class_name for t in found + tracker.flush()]

    assert confirmed(None) == []
    assert confirmed({1: 0.2}) == ["crack"]
    assert confirmed({0: 0.2}) == []  # another class's setting does not apply
    assert math.isclose(TrackerConfig().confirm_score, 0.4)
