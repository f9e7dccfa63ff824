"""The simulator's training scenes: shapes, labels that match painted potholes, determinism, speed."""

from __future__ import annotations

import time

import numpy as np

from edge_agent.lab.sim.render import random_training_scene


def test_scene_shapes_and_labels() -> None:
    rng = np.random.default_rng(3)
    total = 0
    for _ in range(30):
        img, boxes, names = random_training_scene(rng, 320, 256)
        assert img.shape == (256, 320, 3) and img.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.shape == (len(names), 4)
        assert set(names) <= {"pothole"}
        assert len(boxes) <= 4
        if len(boxes):
            assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
            assert np.all(boxes[:, 2] <= 320) and np.all(boxes[:, 3] <= 256)
            assert np.all(boxes[:, 2] - boxes[:, 0] >= 3) and np.all(boxes[:, 3] - boxes[:, 1] >= 3)
        total += len(boxes)
    assert total >= 30, "about 2 potholes per scene expected on average"


def test_potholes_are_darker_than_their_surroundings() -> None:
    rng = np.random.default_rng(11)
    darker = checked = 0
    for _ in range(25):
        img, boxes, _ = random_training_scene(rng, 320, 320)
        gray = img.mean(axis=2)
        for x1, y1, x2, y2 in boxes.astype(int):
            w, h = x2 - x1, y2 - y1
            if w < 12 or h < 8:
                continue
            inner = gray[y1 + h // 3: y2 - h // 3, x1 + w // 3: x2 - w // 3].mean()
            ring = np.concatenate([gray[max(y1 - h // 2, 0):y1, x1:x2].ravel(),
                                   gray[y2:y2 + h // 2, x1:x2].ravel()])
            if ring.size < 20:
                continue
            checked += 1
            darker += inner < np.median(ring) * 0.85
    assert checked >= 10
    assert darker / checked >= 0.8


def test_same_seed_same_scene_and_varied_scenes() -> None:
    a = random_training_scene(np.random.default_rng(5), 256, 256)
    b = random_training_scene(np.random.default_rng(5), 256, 256)
    c = random_training_scene(np.random.default_rng(6), 256, 256)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_scene_is_fast_enough_for_online_training() -> None:
    rng = np.random.default_rng(0)
    random_training_scene(rng, 320, 320)
    # CPU time of this process: wall time on the shared test machine mostly measures the neighbours. 20 ms is
    # the target on an idle core (bench/bench_sim.py measures it); the bound here leaves room for a busy one.
    cpu0 = time.process_time()
    for _ in range(15):
        random_training_scene(rng, 320, 320)
    assert (time.process_time() - cpu0) / 15 < 0.04


def test_odd_and_tiny_sizes_work() -> None:
    rng = np.random.default_rng(2)
    for w, h in ((32, 32), (97, 61), (161, 400)):
        for _ in range(10):
            img, boxes, _ = random_training_scene(rng, w, h)
            assert img.shape == (h, w, 3)
            assert np.all(boxes >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)


def test_boxed_cracks_have_area() -> None:
    """A crack along the image's top edge clipped to a box of no height was written as a label (the evaluation
    then skipped that line with a warning, and training learned a box of nothing)."""
    rng = np.random.default_rng(12345)  # the model's evaluation scenes: scene 8 had one
    cracks = 0
    for _ in range(60):
        _, boxes, names = random_training_scene(rng, 640, 360, box_cracks=True)
        for (x1, y1, x2, y2), name in zip(boxes, names, strict=True):
            assert x2 - x1 >= 1.0 and y2 - y1 >= 1.0, (name, (x1, y1, x2, y2))
            cracks += name == "crack"
    assert cracks >= 30
