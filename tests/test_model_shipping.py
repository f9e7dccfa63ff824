"""`make model` ships a new bundle only when it is not worse than the bundled model on the same validation sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.pipeline import selection_score, ship_if_better


def bundle(folder: Path, pothole: float, crack: float, handheld: float, survey_val: list[str]) -> Path:
    folder.mkdir(parents=True)
    metrics = {"vehicle": {"per_class": {"pothole": {"ap50": pothole}, "crack": {"ap50": crack}}},
               "handheld": {"per_class": {"pothole": {"ap50": handheld}}}}
    (folder / "model.manifest.json").write_text(json.dumps({"metrics": {"chosen": metrics}, "sha256": str(pothole)}))
    (folder / "split.json").write_text(json.dumps({"seed": 1, "val": ["a.jpg"], "survey_val": survey_val}))
    (folder / "model.onnx").write_bytes(f"weights {pothole}".encode())
    return folder


def shipped_weights(folder: Path) -> bytes:
    return (folder / "model.onnx").read_bytes()


def test_the_selection_score_is_the_mean_of_the_three_figures(tmp_path: Path) -> None:
    manifest = json.loads((bundle(tmp_path / "b", 0.3, 0.2, 0.7, ["x"]) / "model.manifest.json").read_text())
    assert selection_score(manifest) == pytest.approx(0.4)


def test_a_worse_model_stays_staged_and_the_bundle_is_untouched(tmp_path: Path, caplog) -> None:
    current = bundle(tmp_path / "bundled", 0.366, 0.273, 0.745, ["DF_010_1.jpg"])
    staged = bundle(tmp_path / "run" / "bundle", 0.20, 0.15, 0.60, ["DF_010_1.jpg"])
    assert ship_if_better(staged, current) is False
    assert shipped_weights(current) == b"weights 0.366"
    assert "NOT shipped" in caplog.text and "0.317 against 0.461" in caplog.text and "--replace" in caplog.text
    assert ship_if_better(staged, current, replace=True) is True
    assert shipped_weights(current) == b"weights 0.2"


def test_a_better_or_equal_model_ships(tmp_path: Path) -> None:
    current = bundle(tmp_path / "bundled", 0.366, 0.273, 0.745, ["DF_010_1.jpg"])
    staged = bundle(tmp_path / "run" / "bundle", 0.364, 0.272, 0.745, ["DF_010_1.jpg"])  # within the margin
    assert ship_if_better(staged, current) is True
    assert shipped_weights(current) == b"weights 0.364"


def test_models_judged_on_other_splits_are_not_compared(tmp_path: Path, caplog) -> None:
    current = bundle(tmp_path / "bundled", 0.366, 0.273, 0.745, ["DF_010_1.jpg"])
    staged = bundle(tmp_path / "run" / "bundle", 0.9, 0.9, 0.9, ["ES_101_1.jpg"])
    assert ship_if_better(staged, current) is False
    assert "another validation split" in caplog.text


def test_the_first_bundle_ships(tmp_path: Path) -> None:
    staged = bundle(tmp_path / "run" / "bundle", 0.1, 0.1, 0.1, ["x"])
    assert ship_if_better(staged, tmp_path / "bundled") is True
    assert shipped_weights(tmp_path / "bundled") == b"weights 0.1"
