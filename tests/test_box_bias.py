"""The box-size analysis of models/box_bias.py on hand-made frames with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from models.box_bias import ap50, scaled, size_ratio


def frame(pred: list[list[float]], true: list[list[float]], score: float = 0.9):
    boxes = np.array(pred, np.float64).reshape(-1, 4)
    return (boxes, np.full(len(boxes), score), np.zeros(len(boxes), int),
            np.array(true, np.float64).reshape(-1, 4), np.zeros(len(true), int))


def test_scaling_keeps_the_centre():
    out = scaled(np.array([[10.0, 20.0, 20.0, 40.0]]), 1.2, 0.5)
    assert out.tolist() == [[9.0, 25.0, 21.0, 35.0]]


def test_size_ratio_is_the_geometric_mean_over_matched_pairs():
    data = [frame([[0, 0, 10, 10]], [[0, 0, 12, 10]]),     # true 1.2x wider
            frame([[0, 0, 10, 10]], [[-1, -1, 11, 11]]),   # 1.2x both ways
            frame([[100, 100, 110, 110]], [[0, 0, 10, 10]])]  # no overlap: not a pair
    w, h = size_ratio(data, 0)
    assert w == pytest.approx(1.2)
    assert h == pytest.approx(np.sqrt(1.2))


def test_a_box_too_small_to_match_is_won_back_by_its_factor():
    data = [frame([[2, 2, 8, 8]], [[0, 0, 10, 10]])]  # IoU 0.36: a miss at 0.5
    assert ap50(data, 0) == 0.0
    assert ap50(data, 0, 1.5, 1.5) == pytest.approx(1.0)
