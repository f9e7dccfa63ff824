"""One track per physical defect whatever class single frames give it (edge_agent.perception.tracker, module
doc): a pothole the model calls `crack` while it is far and `pothole` once near, or boxes twice (once per
class), is one track and one finished track of the class with the most score; two defects of different classes
far apart stay two."""

from __future__ import annotations

import numpy as np

from edge_agent.config.tracker import TrackerConfig
from edge_agent.gnss.motion import Motion
from edge_agent.perception.geolocate import Geolocator
from edge_agent.perception.tracker import Tracker
from tests.test_tracker import FPS, H, W, detections_for, projector

__all__ = ["projector"]
SPEED = 12.0


def run(projector, label, defects, seconds: float = 3.0) -> list:
    """Drive north over DEFECTS (east, north, size); LABEL(k, det) gives each detection's (class_id, name) list."""
    return run_boxes(projector, lambda k, det: [(cid, name, det) for cid, name in label(k, det)], defects, seconds)


def test_a_pothole_called_crack_while_far_is_one_pothole(projector) -> None:
    far = int(0.8 * FPS)  # the first 0.8 s (about 10 m of approach) the model says crack

    def label(k, det):
        return [(1, "crack")] if k < far else [(0, "pothole")]

    found = run(projector, label, [(0.0, 22.0, 0.8)])
    assert [t.class_name for t in found] == ["pothole"]
    assert set(found[0].class_scores) == {0, 1}


def test_a_pothole_boxed_once_per_class_is_one_track(projector) -> None:
    def label(k, det):
        both = [(0, "pothole"), (1, "crack")]
        return both if k % 3 else [(0, "pothole")]  # a second, crack box on two frames of three

    found = run(projector, label, [(0.0, 20.0, 0.8)])
    assert [t.class_name for t in found] == ["pothole"], [(t.class_name, t.class_scores) for t in found]


def test_defects_of_two_classes_apart_stay_two(projector) -> None:
    def label(k, det):
        return [(0, "pothole")] if det.x1 < W / 2 - 100 else [(1, "crack")]

    found = run(projector, label, [(-2.5, 18.0, 0.8), (2.5, 18.0, 0.8)])
    assert sorted(t.class_name for t in found) == ["crack", "pothole"]


def test_a_far_pothole_boxed_twice_as_crack_is_one_pothole(projector) -> None:
    """Far away the model boxes the pothole twice as `crack` (the second box lower and narrower, IoU ~0.3, which
    NMS keeps), then once as `pothole` from closer on: one pothole, not a pothole and a crack."""
    far = int(1.0 * FPS)

    def label(k, det):
        if k >= far:
            return [(0, "pothole", det)]
        h, w = det.y2 - det.y1, det.x2 - det.x1
        twin = det.__class__(det.x1 + 0.15 * w, det.y1 + 0.45 * h, det.x2 - 0.1 * w, det.y2 + 0.45 * h, 0.6, 1, "crack")
        return [(1, "crack", det), (1, "crack", twin)]

    found = run_boxes(projector, label, [(0.0, 24.0, 0.8)])
    assert [t.class_name for t in found] == ["pothole"], [(t.class_name, t.hits) for t in found]


def test_two_potholes_side_by_side_stay_two(projector) -> None:
    def label(k, det):
        return [(0, "pothole", det)]

    found = run_boxes(projector, label, [(-0.8, 18.0, 0.8), (0.8, 18.0, 0.8)])
    assert [t.class_name for t in found] == ["pothole", "pothole"]


def test_near_views_outvote_far_ones(projector) -> None:
    """Twice as many frames call it `crack` while it is far and small as call it `pothole` from close by: a box's
    vote grows with its size, so it is a pothole."""
    def label(k, det):
        return [(1, "crack", det)] if det.y2 - det.y1 < 40 else [(0, "pothole", det)]

    found = run_boxes(projector, label, [(0.0, 22.0, 0.8)])
    assert [t.class_name for t in found] == ["pothole"]
    assert found[0].class_scores[1] > 0


def run_boxes(projector, label, defects, seconds: float = 3.0) -> list:
    """As run, but LABEL(k, det) gives (class_id, name, box) triples: the boxes themselves may differ."""
    rng = np.random.default_rng(5)
    tracker = Tracker(TrackerConfig(), Geolocator(projector))
    pos, image, found = np.zeros(2), np.full((H, W, 3), 110, np.uint8), []
    for k in range(int(seconds * FPS)):
        dets = []
        for det in detections_for(projector, defects, pos, 0.0, rng, miss=0.0, score=0.7):
            dets += [box.__class__(box.x1, box.y1, box.x2, box.y2, box.score, cid, name)
                     for cid, name, box in label(k, det)]
        found += tracker.step(k / FPS, dets, Motion(SPEED / FPS, 0.0), image=image)
        pos = pos + np.array([0.0, SPEED / FPS])
    return found + tracker.flush()


def braking_in_a_tunnel(projector, coasting: bool) -> list:
    """The vehicle brakes hard (6 m/s², 12 down to 3 m/s) while the motion it is told keeps 12 m/s (the filter
    coasting without fixes); the model calls the pothole `crack` far off, misses it for 8 frames, then calls it
    `pothole`."""
    rng = np.random.default_rng(5)
    tracker = Tracker(TrackerConfig(), Geolocator(projector))
    image, found, north = np.full((H, W, 3), 110, np.uint8), [], 0.0
    for k in range(int(4.0 * FPS)):
        dets = []
        if not 12 <= k < 20:
            for det in detections_for(projector, [(0.0, 24.0, 0.8)], np.array([0.0, north]), 0.0, rng, miss=0.0,
                                      score=0.7):
                cid, name = (1, "crack") if k < 12 else (0, "pothole")
                dets.append(det.__class__(det.x1, det.y1, det.x2, det.y2, det.score, cid, name))
        found += tracker.step(k / FPS, dets, Motion(12.0 / FPS, 0.0, coasting=coasting), image=image)
        north += max(12.0 - 6.0 * k / FPS, 3.0) / FPS
    return found + tracker.flush()


def test_while_coasting_the_gates_widen_so_a_defect_stays_one(projector) -> None:
    """Told the wrong speed, the crack track's prediction runs metres ahead of the pothole seen later: with fixes
    that would be two defects; without (Motion.coasting) the gates are tracker.coast_gate_factor wider."""
    assert [t.class_name for t in braking_in_a_tunnel(projector, coasting=False)] == ["crack", "pothole"]
    assert [t.class_name for t in braking_in_a_tunnel(projector, coasting=True)] == ["pothole"]
