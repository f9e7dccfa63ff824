"""AP50/P/R/F1 against cases worked out by hand, and `edge-agent model eval` on a labelled set with known AP."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.detect.decode import anchor_count
from edge_agent.lab.evaluate import ClassRecord, add_image, all_point_ap, box_iou, class_metrics
from tests.test_detector import constant_model


def test_ap50_hand_checked_case():
    """Image 1 has A and B, image 2 has C. Detections by score: A (TP), nothing (FP), B (TP), A again (FP,
    A is taken), C (TP). Recall 1/3, 1/3, 2/3, 2/3, 1; precision 1, 1/2, 2/3, 1/2, 3/5.
    Envelope: 1 on (0, 1/3], 2/3 on (1/3, 2/3], 3/5 on (2/3, 1] -> AP = (1 + 2/3 + 3/5) / 3 = 0.75556."""
    a, b, c = [0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 25, 25]
    records: dict[int, ClassRecord] = {}
    add_image(records, det_boxes=np.array([[0, 0, 10, 10], [60, 60, 70, 70], [21, 21, 40, 40], [1, 0, 10, 10]]),
              det_scores=np.array([0.9, 0.8, 0.7, 0.6]), det_classes=np.zeros(4, int),
              gt_boxes=np.array([a, b]), gt_classes=np.zeros(2, int))
    add_image(records, det_boxes=np.array([[5, 5, 24, 25]]), det_scores=np.array([0.5]),
              det_classes=np.zeros(1, int), gt_boxes=np.array([c]), gt_classes=np.zeros(1, int))
    m = class_metrics(records[0], score_threshold=0.55)
    assert m.ap50 == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # At score >= 0.55: 4 detections, 2 true -> P 1/2, R 2/3, F1 4/7.
    assert (m.precision, m.recall) == (pytest.approx(0.5), pytest.approx(2 / 3))
    assert m.f1 == pytest.approx(4 / 7)


def test_iou_threshold_is_inclusive_and_classes_do_not_mix():
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 20]]))[0, 0] == pytest.approx(0.5)
    records: dict[int, ClassRecord] = {}
    add_image(records, np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), np.array([0.9, 0.8]), np.array([0, 1]),
              np.array([[0, 0, 10, 20]]), np.array([0]))
    assert records[0].tp == [True]          # IoU exactly 0.5 counts
    assert records[1].tp == [False] and records[1].n_gt == 0  # right place, wrong class


def test_all_point_ap_edge_cases():
    assert all_point_ap(np.array([1.0]), np.array([1.0])) == 1.0
    assert all_point_ap(np.array([0.5, 0.5]), np.array([1.0, 0.5])) == 0.5
    m = class_metrics(ClassRecord(n_gt=3), 0.5)  # no detections at all
    assert m.ap50 == 0.0 and m.recall == 0.0


KNOWN_AP = 0.5 + 0.5 * 4 / 6


def three_boxes() -> np.ndarray:
    """A model output with three boxes at 320 px; on known_ap_set it scores KNOWN_AP.
    Sorted: 0.9 TP, 0.9 TP, 0.8 FP, 0.8 FP, 0.7 TP, 0.7 TP over 4 boxes -> AP = 0.5*1 + 0.5*(4/6) = 0.8333."""
    out = np.zeros((1, 5, anchor_count(320, 320)), np.float32)
    out[0, :4] = 5.0
    out[0, :, 0] = (60, 60, 40, 40, 0.9)     # on label 1
    out[0, :, 1] = (160, 160, 40, 40, 0.8)   # on nothing
    out[0, :, 2] = (260, 260, 40, 40, 0.7)   # on label 2
    return out


def known_ap_set(folder):
    """Two images, each labelled with two of three_boxes' boxes."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / "images" / f"{i}.png"), np.full((320, 320, 3), 100, np.uint8))
        (folder / "labels" / f"{i}.txt").write_text("0 0.1875 0.1875 0.125 0.125\n0 0.8125 0.8125 0.125 0.125\n")
    return folder


def test_model_eval_cli_on_a_set_with_known_ap(tmp_path):
    """A model that always outputs three boxes; two images each labelled with two of them."""
    model = constant_model(tmp_path / "m.onnx", three_boxes(), names="{0: 'pothole'}")
    data = known_ap_set(tmp_path / "set")
    plot = tmp_path / "pr.png"
    res = CliRunner().invoke(app, ["model", "eval", "--model", str(model), "--data", str(data), "--json",
                                   "--threshold", "0.75", "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(result) >= {"ap50", "per_class", "precision", "recall", "f1", "latency_ms"}
    assert result["ap50"] == pytest.approx(KNOWN_AP)
    assert result["per_class"]["pothole"]["ap50"] == pytest.approx(result["ap50"])
    # At 0.75: the 0.9 and 0.8 boxes of both images -> 2 TP of 4 detections, 2 of 4 labels.
    assert (result["precision"], result["recall"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert result["latency_ms"]["median"] > 0 and result["latency_ms"]["p95"] >= result["latency_ms"]["median"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = CliRunner().invoke(app, ["model", "eval", "--model", str(model), "--data", str(data)])
    assert table.exit_code == 0 and "0.833" in table.output


def test_model_eval_label_map_pairs_labels_with_a_model_numbered_otherwise(tmp_path):
    """An RDD2022-style model (D00 cracks, D40 potholes) on a set whose pothole labels are class 0: matched by id
    the potholes were scored as D00, AP near 0, without a word. --label-map 0=D40 pairs them."""
    one = three_boxes()
    out = np.zeros((1, 6, one.shape[2]), np.float32)
    out[0, :4], out[0, 5] = one[0, :4], one[0, 4]   # every box is class 1, D40
    model = constant_model(tmp_path / "rdd.onnx", out, names="{0: 'D00', 1: 'D40'}")
    data = known_ap_set(tmp_path / "set")
    base = ["model", "eval", "--model", str(model), "--data", str(data), "--json"]
    by_id = json.loads(CliRunner().invoke(app, base).stdout.strip().splitlines()[-1])
    assert by_id["per_class"]["D00"]["ap50"] == 0.0
    mapped = CliRunner().invoke(app, [*base, "--label-map", "0=D40"])
    assert mapped.exit_code == 0, mapped.output
    result = json.loads(mapped.stdout.strip().splitlines()[-1])
    assert result["per_class"]["D40"]["ap50"] == pytest.approx(KNOWN_AP) and result["per_class"]["D40"]["n_gt"] == 4
    unmapped = CliRunner().invoke(app, [*base, "--label-map", "1=D40"])   # label 0 is not listed: left out
    assert json.loads(unmapped.stdout.strip().splitlines()[-1])["per_class"]["D40"]["n_gt"] == 0
    bad = CliRunner().invoke(app, [*base, "--label-map", "0=D99"])
    assert bad.exit_code == 2 and "no class 'D99'" in bad.output


def test_model_eval_cli_scores_a_tensorflow_style_model_like_its_pixel_twin(tmp_path):
    """NHWC input, boxes as fractions of the input, no class names: the AP is the pixel model's, not 0."""
    out = three_boxes()
    out[0, :4] /= 320
    model = constant_model(tmp_path / "tf.onnx", out, input_shape=[1, 320, 320, 3])
    data = known_ap_set(tmp_path / "set")
    res = CliRunner().invoke(app, ["model", "eval", "--model", str(model), "--data", str(data), "--json",
                                   "--names", "pothole"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["ap50"] == pytest.approx(KNOWN_AP)
    assert list(result["per_class"]) == ["pothole"]
    info = CliRunner().invoke(app, ["model", "info", "--model", str(model), "--json"])
    assert info.exit_code == 0, info.output
    described = json.loads(info.stdout.strip().splitlines()[-1])
    assert (described["input_layout"], described["box_units"], described["classes"]) == ("NHWC", "fractions", ["0"])


def test_model_eval_cli_rejects_a_folder_without_labels(tmp_path):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    out = np.zeros((1, 5, anchor_count(320, 320)), np.float32)
    out[0, 4, 0] = 0.9
    model = constant_model(tmp_path / "m.onnx", out, names="{0: 'pothole'}")
    res = CliRunner().invoke(app, ["model", "eval", "--model", str(model), "--data", str(tmp_path)])
    assert res.exit_code == 2


@pytest.mark.parametrize(("make", "words"), [
    (("images", "labels"), "images/ holds no pictures"),
    (("images",), "no labels/ folder"),
    ((), "no images/ and no labels/ folder"),
])
def test_model_eval_says_what_the_folder_lacks_before_loading_the_model(tmp_path, make, words):
    # An empty images/ beside labels/ got "expected a YOLO-layout folder with images/ and labels/", and the
    # model was loaded (seconds on a Pi) before the folder was looked at.
    data = tmp_path / "set"
    data.mkdir()
    for name in make:
        (data / name).mkdir()
    res = CliRunner().invoke(app, ["model", "eval", "--model", str(tmp_path / "no-such-model.onnx"),
                                   "--data", str(data)])
    assert res.exit_code == 2 and words in res.output, res.output
    assert "no-such-model" not in res.output


def test_label_lines_that_are_not_boxes_are_skipped_with_the_file_and_line(tmp_path, caplog):
    from edge_agent.lab.evaluate import read_yolo_labels

    labels = tmp_path / "a.txt"
    labels.write_text("0 0.5 0.5 0.2 0.2\n-1 0.5 0.5 0.2 0.2\n0.5 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n"
                      "0 1.5 0.5 0.2 0.2\n0 nan 0.5 0.2 0.2\n0 0.5 0.5 0 0.2\n1 0.5 0.5 1.0000001 0.2\n"
                      "0 0.1 0.1 0.1 0.1 0.2 0.2 0.3 0.3\n")
    boxes, classes = read_yolo_labels(labels, 100, 100)
    assert classes.tolist() == [0, 1]
    assert boxes[0].tolist() == pytest.approx([40, 40, 60, 60])
    skipped = [r.getMessage() for r in caplog.records if "not a YOLO box line" in r.getMessage()]
    assert [m.split(":")[1] for m in skipped] == ["2", "3", "4", "5", "6", "7", "9"]


def test_model_eval_refuses_labels_of_a_class_the_model_does_not_have(tmp_path):
    model = constant_model(tmp_path / "m.onnx", three_boxes(), names="{0: 'pothole'}")
    data = known_ap_set(tmp_path / "set")
    (data / "labels" / "1.txt").write_text("0 0.1875 0.1875 0.125 0.125\n5 0.8125 0.8125 0.125 0.125\n")
    res = CliRunner().invoke(app, ["model", "eval", "--model", str(model), "--data", str(data)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert "1.txt: class 5, but the model has 1 classes (pothole)" in " ".join(res.output.split())
