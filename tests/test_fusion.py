"""Two looks at one frame (detector.mirror_pass): boxes placed back from the mirror image, and fused."""

from __future__ import annotations

import pytest

from edge_agent.detect.detector import Detection
from edge_agent.detect.fusion import fuse, mirrored


def det(x1: float, y1: float, x2: float, y2: float, score: float, cls: int = 0) -> Detection:
    return Detection(x1, y1, x2, y2, score, cls, ("pothole", "crack")[cls])


def test_a_box_found_on_the_mirror_image_goes_back_to_its_side_of_the_frame():
    (back,) = mirrored([det(10, 20, 40, 50, 0.7)], width=640)
    assert (back.x1, back.y1, back.x2, back.y2, back.score) == (600, 20, 630, 50, 0.7)


def test_boxes_both_passes_found_become_one_weighted_box_with_the_mean_score():
    (one,) = fuse([[det(100, 100, 200, 200, 0.6)], [det(110, 100, 210, 200, 0.2)]], iou_threshold=0.5)
    assert one.x1 == pytest.approx(102.5) and one.x2 == pytest.approx(202.5)  # (0.6 * 100 + 0.2 * 110) / 0.8
    assert (one.y1, one.y2) == (100, 200)
    assert one.score == pytest.approx(0.4)


def test_a_box_one_pass_alone_found_keeps_half_its_score():
    fused = fuse([[det(100, 100, 200, 200, 0.8), det(400, 100, 450, 150, 0.6)], [det(102, 98, 200, 200, 0.8)]],
                 iou_threshold=0.5)
    assert [round(d.score, 3) for d in fused] == [0.8, 0.3]
    assert (fused[1].x1, fused[1].x2) == (400, 450)


def test_classes_and_boxes_that_barely_overlap_stay_apart():
    fused = fuse([[det(100, 100, 200, 200, 0.8, cls=0)], [det(100, 100, 200, 200, 0.6, cls=1),
                                                         det(160, 100, 260, 200, 0.5, cls=0)]], iou_threshold=0.5)
    assert sorted((d.class_name, round(d.score, 2)) for d in fused) == [("crack", 0.3), ("pothole", 0.25),
                                                                          ("pothole", 0.4)]


def test_two_boxes_of_one_pass_in_one_object_count_once():
    """The score is each pass's best, averaged: a pass that found an object twice does not outvote the other."""
    (one,) = fuse([[det(100, 100, 200, 200, 0.6), det(100, 110, 200, 210, 0.5)], []], iou_threshold=0.5)
    assert one.score == pytest.approx(0.3)


def test_nothing_found_fuses_to_nothing():
    assert fuse([[], []], iou_threshold=0.5) == []
