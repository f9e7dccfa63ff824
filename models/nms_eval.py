"""Which boxes survive NMS? The bundled model's raw boxes (before NMS) on the survey frames, merged per class
(the agent's), across classes, or fused (weighted box fusion of one pass, `edge_agent.detect.fusion`), at IoU
0.3-0.7: AP50 per class, chosen on the TRAINING highways and judged on the validation highways.

    python -m models.nms_eval [--model bundled]

Of the validation highways' pothole boxes, about one in five lies on a true pothole without matching it (a
second or badly sized box, docs/model.md), which a tighter or fused merge might win back. The result, in
docs/model.md, is why the agent keeps per-class NMS at IoU 0.5.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import Detection, load_detector
from edge_agent.detect.fusion import fuse
from edge_agent.detect.nms import nms
from edge_agent.lab.evaluate import add_image, list_dataset_images, summarize
from models.box_bias import Frame, frames
from models.data import CLASSES, DEFAULT_SURVEY
from models.masks import write_yolo_split
from models.pipeline import CACHE, validation_highways

IOUS = (0.3, 0.4, 0.5, 0.6, 0.7)
MODES = ("per class", "across classes", "fused")
RAW_IOU = 0.95  # the detector's own NMS, all but off: only boxes that are one box twice are merged


def merged(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, mode: str, iou: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's raw boxes merged by MODE at IOU."""
    if not len(boxes):
        return boxes, scores, classes
    if mode == "fused":
        dets = [Detection(*map(float, b), float(s), int(c), "") for b, s, c in zip(boxes, scores, classes, strict=True)]
        out = fuse([dets], iou)
        return (np.array([[d.x1, d.y1, d.x2, d.y2] for d in out]).reshape(-1, 4), np.array([d.score for d in out]),
                np.array([d.class_id for d in out], int))
    keep = nms(boxes, scores, classes if mode == "per class" else np.zeros_like(classes), iou)
    return boxes[keep], scores[keep], classes[keep]


def ap50s(data: list[Frame], mode: str, iou: float) -> list[float]:
    records: dict = {}
    for boxes, scores, classes, gt, gc in data:
        add_image(records, *merged(boxes, scores, classes, mode, iou), gt, gc)
    result = summarize(records, 0.2)
    return [result[c].ap50 if c in result else 0.0 for c in range(len(CLASSES))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--survey", type=Path, default=DEFAULT_SURVEY)
    args = parser.parse_args()
    detector = load_detector(DetectorConfig(model=args.model, iou_threshold=RAW_IOU, max_detections=1000))
    val_folder = validation_highways(args.survey)
    val_stems = {p.stem for p in list_dataset_images(val_folder)}
    train_stems = sorted(p.stem for p in (args.survey / "images").iterdir() if p.stem not in val_stems)
    train = frames(detector, write_yolo_split(args.survey, train_stems, CACHE / "box_bias_train"), "training highways")
    val = frames(detector, val_folder, "validation highways")
    names = " / ".join(CLASSES)
    print(f"merge            IoU   AP50 {names} (training highways)   (validation highways)")
    best = None
    for mode in MODES:
        for iou in IOUS:
            on_train, on_val = ap50s(train, mode, iou), ap50s(val, mode, iou)
            print(f"{mode:<15}  {iou:.1f}   {on_train[0]:.3f} / {on_train[1]:.3f}"
                  f"                      {on_val[0]:.3f} / {on_val[1]:.3f}", flush=True)
            if best is None or np.mean(on_train) > best[0]:
                best = (float(np.mean(on_train)), mode, iou, on_val)
    _, mode, iou, on_val = best
    print(f"chosen on the training highways: {mode} at IoU {iou:.1f}; validation {on_val[0]:.3f} / {on_val[1]:.3f}")


if __name__ == "__main__":
    main()
