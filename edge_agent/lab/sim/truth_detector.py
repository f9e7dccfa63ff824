"""A detector that reads a simulated drive's own boxes (boxes.csv): a perfect detector, to judge everything
after the model (tracker, geolocation, events) on its own, for every class the simulator boxes."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from edge_agent.detect.detector import Detection, ModelInfo

CLASSES = ("pothole", "crack")


class TruthDetector:
    """`detect` returns the boxes of the next frame; replay (a file, not in real time) hands over every frame
    in order, so the n-th call is frame n."""

    def __init__(self, boxes_csv: Path, score: float = 0.9) -> None:
        self.boxes: dict[int, list[Detection]] = defaultdict(list)
        with boxes_csv.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                cls = row["class"]
                self.boxes[int(row["frame"])].append(Detection(
                    float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"]), score,
                    CLASSES.index(cls), cls))
        self.info = ModelInfo(name="simulator-boxes", version="1", sha256="0" * 64, classes=CLASSES,
                              input_size=(0, 0), provider="none", path=str(boxes_csv))
        self.frame = 0

    def detect(self, image: np.ndarray) -> list[Detection]:
        found = self.boxes.get(self.frame, [])
        self.frame += 1
        return list(found)
