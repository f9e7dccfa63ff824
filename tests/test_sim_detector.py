"""The bundled model finds the potholes the simulator paints (skipped only while its file is absent)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import cv2
import pytest

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import load_detector
from edge_agent.lab.sim.drive import DriveSpec, simulate_drive

BUNDLED = Path(__file__).resolve().parent.parent / "models" / "bundled" / "model.onnx"


def test_bundled_model_finds_painted_potholes(tmp_path: Path) -> None:
    if not BUNDLED.exists():
        pytest.skip("the bundled model (models/bundled/model.onnx) is not installed")
    # A bundled model that is there but does not load is a failure, not a skip.
    detector = load_detector(DetectorConfig(model="bundled"))  # the threshold the agent runs with
    out = tmp_path / "d"
    simulate_drive(DriveSpec(out=out, seed=11, minutes=0.5, defects=8, potholes=6))
    boxes: dict[int, list[tuple[str, float, float, float, float]]] = defaultdict(list)
    with (out / "boxes.csv").open() as fh:
        for r in csv.DictReader(fh):
            if r["class"] != "pothole":  # the drive's cracks are boxed too; this judges the potholes
                continue
            x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
            # Judge the model where a pothole is clearly visible: at least 24 px wide and 8 px high.
            if x2 - x1 >= 24 and y2 - y1 >= 8:
                boxes[int(r["frame"])].append((r["id"], x1, y1, x2, y2))
    cap = cv2.VideoCapture(str(out / "video.mp4"))
    hits: dict[str, int] = defaultdict(int)
    looks: dict[str, int] = defaultdict(int)
    k = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if k in boxes and k % 2 == 0:
            dets = detector.detect(frame)
            for pid, x1, y1, x2, y2 in boxes[k]:
                looks[pid] += 1
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                if any(d.x1 <= cx <= d.x2 and d.y1 <= cy <= d.y2 for d in dets):
                    hits[pid] += 1
        k += 1
    assert len(looks) >= 4
    found = [pid for pid in looks if hits[pid] / looks[pid] >= 0.5]
    assert len(found) / len(looks) >= 0.8, {pid: f"{hits[pid]}/{looks[pid]}" for pid in looks}
