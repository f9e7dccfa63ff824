"""The NMS comparison of models/nms_eval.py on hand-made frames with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from models.nms_eval import ap50s, merged

TWIN = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0]])  # IoU 0.83: one object boxed twice


def test_per_class_merge_keeps_one_of_a_twin_and_both_of_two_classes():
    boxes, scores = np.vstack([TWIN, TWIN]), np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 1])
    _, kept_scores, kept_classes = merged(boxes, scores, classes, "per class", 0.5)
    assert kept_scores.tolist() == [0.9, 0.7]
    assert kept_classes.tolist() == [0, 1]
    _, across, _ = merged(boxes, scores, classes, "across classes", 0.5)
    assert across.tolist() == [0.9]


def test_fusion_averages_the_twin_by_score():
    boxes, _, classes = merged(TWIN, np.array([0.75, 0.25]), np.zeros(2, int), "fused", 0.5)
    assert classes.tolist() == [0]
    assert boxes[0].tolist() == pytest.approx([0.0, 0.0, 10.0, 10.5])


def test_a_second_box_on_one_pothole_costs_precision_until_merged():
    twin = (TWIN, np.array([0.9, 0.8]), np.zeros(2, int), TWIN[:1], np.zeros(1, int))
    other = (TWIN[:1], np.array([0.7]), np.zeros(1, int), TWIN[:1], np.zeros(1, int))
    assert ap50s([twin, other], "per class", 0.9)[0] < 0.9  # IoU 0.83: kept apart, a false box ranks second
    assert ap50s([twin, other], "per class", 0.5)[0] == pytest.approx(1.0)
