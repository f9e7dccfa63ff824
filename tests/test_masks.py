"""Boxes from the survey set's masks (models/masks.py): what one pothole and one crack are for the model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.masks import (
    CRACK_GAP,
    CRACK_MIN_LENGTH,
    boxes_for,
    crack_boxes,
    highway_of,
    pothole_boxes,
    write_yolo_split,
)


def blank(h: int = 100, w: int = 200) -> np.ndarray:
    return np.zeros((h, w), bool)


def test_a_pothole_drawn_in_touching_pieces_is_one_box():
    m = blank()
    m[40:60, 50:70] = True
    m[40:60, 72:90] = True  # a 2-px seam, as annotators leave between strokes
    boxes = pothole_boxes(m)
    assert [b.box for b in boxes] == [(50.0, 40.0, 90.0, 60.0)]
    assert boxes[0].cls == 0 and boxes[0].pixels == 20 * 20 + 20 * 18


def test_potholes_far_apart_stay_two_and_specks_are_dropped():
    m = blank()
    m[10:30, 10:30] = True
    m[10:30, 100:130] = True
    m[80:83, 150:180] = True  # 3 px high: under the 5 px side
    m[70:75, 20:26] = True  # 30 px²: under the 40 px² area
    assert [b.box for b in pothole_boxes(m)] == [(10.0, 10.0, 30.0, 30.0), (100.0, 10.0, 130.0, 30.0)]


def test_crack_fragments_within_the_gap_are_one_crack_with_the_box_of_its_pixels():
    m = blank()
    cv2.line(m.view(np.uint8), (20, 50), (60, 50), 1, 1)
    cv2.line(m.view(np.uint8), (60 + CRACK_GAP - 2, 52), (120, 52), 1, 1)  # a break shorter than the gap
    boxes = crack_boxes(m)
    assert [b.box for b in boxes] == [(20.0, 50.0, 121.0, 53.0)]  # the pixels' box, not the grown mask's
    assert boxes[0].cls == 1


def test_cracks_farther_apart_than_the_gap_and_short_marks():
    m = blank()
    cv2.line(m.view(np.uint8), (10, 20), (60, 20), 1, 1)
    cv2.line(m.view(np.uint8), (10, 20 + 2 * CRACK_GAP), (60, 20 + 2 * CRACK_GAP), 1, 1)
    cv2.line(m.view(np.uint8), (150, 80), (150 + CRACK_MIN_LENGTH - 3, 80), 1, 1)  # too short to be a crack
    assert sorted(b.box for b in crack_boxes(m)) == [(10.0, 20.0, 61.0, 21.0), (10.0, 60.0, 61.0, 61.0)]


def test_lane_mask_marks_boxes_in_the_driven_lane():
    m = blank()
    m[10:30, 10:30] = True
    m[10:30, 150:180] = True
    lane = blank()
    lane[:, 100:] = True
    assert [b.in_lane for b in pothole_boxes(m, lane)] == [False, True]


def test_highway_names():
    assert highway_of("1044259_DF_060_060BDF0050_00121.jpg") == "DF_060"
    with pytest.raises(ValueError, match="not a survey image name"):
        highway_of("img-12.jpg")


@pytest.mark.shared
def test_the_survey_set_gives_the_documented_box_counts_and_a_yolo_split(shared_survey, tmp_path):
    """Golden counts over the whole survey copy: a change of the rules shows here, and in docs/model.md."""
    SURVEY = shared_survey
    stems = sorted(p.stem for p in (SURVEY / "images").iterdir())
    counts = [0, 0]
    for stem in stems:
        for b in boxes_for(SURVEY, stem):
            counts[b.cls] += 1
    assert len(stems) == 1562
    assert counts == GOLDEN_COUNTS
    some = [s for s in stems if highway_of(s) == "DF_060"]
    folder = write_yolo_split(SURVEY, some, tmp_path / "df060")
    lines = [ln.split() for p in sorted((folder / "labels").iterdir()) for ln in p.read_text().splitlines()]
    assert len(list((folder / "images").iterdir())) == 15
    assert sum(1 for ln in lines if ln[0] == "0") == 21 and all(0 <= float(v) <= 1 for ln in lines for v in ln[1:])


GOLDEN_COUNTS = [959, 2668]  # potholes, cracks


def _survey_frame(root, stem: str, pothole: bool = True, masks: tuple[str, ...] = ("pothole", "crack", "lane")):
    for sub in ("images", "masks/pothole", "masks/crack", "masks/lane"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / f"{stem}.jpg"), np.full((100, 200, 3), 90, np.uint8))
    for name in masks:
        m = np.zeros((100, 200), np.uint8)
        if name == "pothole" and pothole:
            m[40:60, 50:80] = 255
        cv2.imwrite(str(root / "masks" / name / f"{stem}.png"), m)


def test_highways_kept_apart_become_a_yolo_folder_for_model_eval(tmp_path):
    """The card's figures are to be checked on highways this checkout does not have: `python -m models.pipeline
    --highways all` writes any survey folder, and the validation highways it does not hold are named as such."""
    from models.pipeline import survey_frames

    root = tmp_path / "kept-apart"
    _survey_frame(root, "1_SC_101_a_00001")
    _survey_frame(root, "2_SC_101_a_00002", pothole=False)
    _survey_frame(root, "3_PR_277_a_00001")
    with pytest.raises(SystemExit, match="--highways all"):
        survey_frames(root, "validation")  # it used to crash on the first validation frame it did not find
    assert survey_frames(root, "all") == ["1_SC_101_a_00001", "2_SC_101_a_00002", "3_PR_277_a_00001"]
    assert survey_frames(root, "SC_101") == ["1_SC_101_a_00001", "2_SC_101_a_00002"]
    folder = write_yolo_split(root, survey_frames(root, "SC_101"), tmp_path / "yolo")
    assert (folder / "labels" / "1_SC_101_a_00001.txt").read_text().split() == \
        ["0", "0.325000", "0.500000", "0.150000", "0.200000"]
    assert (folder / "labels" / "2_SC_101_a_00002.txt").read_text() == ""
    with pytest.raises(SystemExit, match=r"no \.jpg frame of 'DF_010'"):
        survey_frames(root, "DF_010")
    _survey_frame(root, "4_PR_277_a_00002", masks=("lane",))  # a frame without its masks is no defect-free road
    with pytest.raises(SystemExit, match="1 of 2 frames lack masks"):
        survey_frames(root, "PR_277")
