"""The error kinds of models/error_breakdown.py on a hand-made frame where each kind occurs once."""

from __future__ import annotations

import numpy as np

from models.card import errors_section
from models.error_breakdown import band, classify_frame


def test_each_box_and_each_true_defect_gets_its_kind():
    gt = np.array([[0, 0, 20, 20],        # pothole, found
                   [100, 0, 120, 20],     # pothole, only a shifted box on it: boxed badly
                   [200, 0, 220, 20],     # pothole the model calls a crack
                   [300, 0, 320, 20],     # pothole nobody boxed: missed
                   [400, 0, 440, 10]], float)  # a crack
    gc = np.array([0, 0, 0, 0, 1])
    boxes = np.array([[1, 1, 20, 20],        # match
                      [110, 5, 130, 25],     # misplaced (IoU ~0.2 with the second pothole)
                      [2, 2, 19, 19],        # second box on the found one: misplaced
                      [401, 0, 440, 10],     # pothole box on the crack: other class
                      [600, 0, 620, 20],     # on nothing marked
                      [200, 0, 220, 20]], float)  # the crack box on the third pothole
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.9])
    classes = np.array([0, 0, 0, 0, 0, 1])
    box_kinds, truth_kinds = classify_frame(boxes, scores, classes, gt, gc, cls=0)
    assert box_kinds == ["match", "misplaced", "misplaced", "other class", "on nothing marked"]
    assert truth_kinds == ["found", "boxed badly", "called the other class", "missed"]
    crack_boxes, crack_truth = classify_frame(boxes, scores, classes, gt, gc, cls=1)
    assert crack_boxes == ["other class"] and crack_truth == ["called the other class"]


def test_height_bands_follow_the_far_pothole_sizes():
    assert band(np.array([0, 0, 50, 12.9])) == "under 13 px"
    assert band(np.array([0, 0, 5, 13])) == "13-24 px"
    assert band(np.array([0, 10, 5, 34])) == "24 px and over"


def test_the_card_counts_boxes_per_km():
    counts = {"boxes": {"match": 3, "on nothing marked": 10}, "truth": {"under 13 px": {"missed": 2}}}
    lines = errors_section({"frames": 400, "km": 2.0, "pothole": counts, "crack": counts})
    assert "| pothole | 13 | 3 | 0 | 0 | 10 | 5 |" in lines
    assert "| crack | under 13 px | 2 | 0 | 0 | 0 | 2 |" in lines
