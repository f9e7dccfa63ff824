"""The shipped model: loads with its checks, is what the card says, finds potholes in rendered road scenes, and
reproduces its card's figures on the held-out vehicle-view highways and photos."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import load_detector
from edge_agent.detect.manifest import REPO_ROOT
from edge_agent.lab.evaluate import box_iou
from roadmon_contract.digest import sha256_file

BUNDLE = REPO_ROOT / "models" / "bundled"


@pytest.fixture(scope="module")
def detector():
    return load_detector(DetectorConfig())  # "bundled" is the default


@pytest.fixture(scope="module")
def manifest():
    return json.loads((BUNDLE / "model.manifest.json").read_text())


def test_bundled_model_loads_and_matches_its_manifest(detector, manifest):
    assert detector.info.path == str(BUNDLE / "model.onnx")
    assert detector.info.classes == ("pothole", "crack")
    assert detector.info.sha256 == manifest["sha256"] == sha256_file(BUNDLE / "model.onnx")
    assert detector.info.input_size == tuple(manifest["input_size"]) == (640, 384)
    assert os.path.getsize(BUNDLE / "model.onnx") < 8 * 1024 * 1024
    for key in ("name", "version", "classes", "class_thresholds", "training", "metrics", "latency", "quantization",
                "licence"):
        assert key in manifest
    # Each class is cut at the manifest's working threshold, which the card states.
    assert detector.thresholds == tuple(manifest["class_thresholds"][c] for c in ("pothole", "crack"))
    credits = " ".join(manifest["training"]["data"])
    assert "MIT" in credits and "ODbL" in credits
    card = (BUNDLE / "MODEL_CARD.md").read_text()
    assert card.count(manifest["sha256"]) == 1 and "Where it is weak" in card
    fp32 = load_detector(DetectorConfig(model=str(BUNDLE / manifest["fp32_model"])))
    assert fp32.info.classes == ("pothole", "crack")
    # Its input is dynamic: the size comes from its manifest, [width, height] (not Ultralytics' [h, w]).
    assert fp32.info.input_size == (640, 384)


def scenes(count: int, seed: int):
    """Road views with potholes: the simulator's renderer when present, else a drawing of our own."""
    rng = np.random.default_rng(seed)
    try:
        from edge_agent.lab.sim.render import random_training_scene
    except ImportError:
        random_training_scene = None
    made = 0
    while made < count:
        if random_training_scene is not None:
            img, boxes, names = random_training_scene(rng, 960, 540)
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)[[n == "pothole" for n in names]]
        else:
            img, boxes = drawn_scene(rng)
        if len(boxes) == 0:
            continue
        made += 1
        yield img, boxes


def drawn_scene(rng):
    img = np.clip(rng.normal(115, 12, (540, 960, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
    img[:200] = (210, 180, 160)
    cx, cy, rx, ry = int(rng.integers(250, 710)), int(rng.integers(380, 470)), int(rng.integers(60, 110)), 35
    ang = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    r = rng.uniform(0.75, 1.0, 30)
    pts = np.stack([cx + np.cos(ang) * r * rx, cy + np.sin(ang) * r * ry], 1).astype(np.int32)
    cv2.fillPoly(img, [pts], (40, 42, 48))
    x, y, w, h = cv2.boundingRect(pts)
    return img, np.array([[x, y, x + w, y + h]], np.float32)


def test_bundled_model_finds_the_nearest_pothole_in_rendered_scenes(detector):
    """The nearest (largest) pothole of each scene is what the agent must not miss; smaller far ones may be."""
    hits, tried = 0, 0
    for img, boxes in scenes(6, seed=2024):
        nearest = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))]
        found = detector.detect(img)
        tried += 1
        if found:
            ious = box_iou(np.array([[d.x1, d.y1, d.x2, d.y2] for d in found]), nearest[None])[:, 0]
            hits += bool(ious.max() >= 0.3)
    assert hits >= tried - 1, f"found the nearest pothole in {hits} of {tried} scenes"


def test_bundled_model_is_quiet_on_an_empty_road(detector):
    rng = np.random.default_rng(5)
    img = np.clip(rng.normal(120, 8, (540, 960, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
    img[:220] = (215, 185, 165)
    assert len(detector.detect(img)) <= 1


@pytest.mark.shared
def test_bundled_model_reproduces_its_card_on_the_held_out_photos(shared_potholes, detector, manifest, tmp_path):
    from edge_agent.lab.evaluate import evaluate_dataset

    split = json.loads((BUNDLE / "split.json").read_text())
    folder = tmp_path / "val"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for name in split["val"]:
        (folder / "images" / name).symlink_to(shared_potholes / "images" / name)
        label = shared_potholes / "labels" / f"{name.rsplit('.', 1)[0]}.txt"
        (folder / "labels" / label.name).symlink_to(label)
    result = evaluate_dataset(detector, folder)
    card = manifest["metrics"]["chosen"]["handheld"]["per_class"]["pothole"]
    assert result["per_class"]["pothole"]["ap50"] == pytest.approx(card["ap50"], abs=0.01)
    assert card["ap50"] >= 0.65  # the floor for handheld photos


@pytest.fixture(scope="module")
def held_out_highways(shared_survey, tmp_path_factory):
    """The vehicle-view validation highways (never trained on) as a YOLO-layout folder."""
    from models.masks import write_yolo_split

    split = json.loads((BUNDLE / "split.json").read_text())
    return write_yolo_split(shared_survey, [n.rsplit(".", 1)[0] for n in split["survey_val"]],
                            tmp_path_factory.mktemp("highways"))


@pytest.fixture(scope="module")
def one_look(held_out_highways, detector):
    """The shipped model's figures on the validation highways, one pass a frame (the agent's default)."""
    from edge_agent.lab.evaluate import evaluate_dataset

    return evaluate_dataset(detector, held_out_highways)


@pytest.mark.shared
def test_bundled_model_reproduces_its_card_on_the_held_out_highways(one_look, manifest):
    """The vehicle view on highways never trained on: the figures the card publishes, per class."""
    result = one_look
    for cls in ("pothole", "crack"):
        card = manifest["metrics"]["chosen"]["vehicle"]["per_class"][cls]
        got = result["per_class"][cls]
        assert got["ap50"] == pytest.approx(card["ap50"], abs=0.01), cls
        assert (got["precision"], got["recall"]) == pytest.approx((card["precision"], card["recall"]), abs=0.02)


@pytest.mark.shared
def test_the_mirror_pass_finds_more_on_the_held_out_highways(held_out_highways, one_look):
    """detector.mirror_pass: the frame and its mirror image, fused, beat one look at every class (measured +2-3
    AP50 points; a fusion that averaged wrong boxes or dropped agreeing ones would lose AP instead)."""
    from edge_agent.lab.evaluate import evaluate_dataset

    twice = load_detector(DetectorConfig(model="bundled", mirror_pass=True))
    one = one_look["per_class"]
    two = evaluate_dataset(twice, held_out_highways, timed=False)["per_class"]
    for cls in ("pothole", "crack"):
        assert two[cls]["ap50"] >= one[cls]["ap50"] + 0.01, (cls, one[cls]["ap50"], two[cls]["ap50"])
