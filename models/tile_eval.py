"""Does looking twice help? The bundled model on the validation highways with extra passes over zoomed crops of
the road ahead (where far, small potholes are), merged with the whole frame's detections: AP50 per class.

    python -m models.tile_eval [--model bundled]

Each crop is letterboxed to the model's input like a frame, so a far pothole is seen ~1.9x larger. Crop
detections cut by an inner crop edge are left to the whole frame; the rest join the frame's and overlapping
boxes of a class are merged (NMS at IoU 0.5), optionally with the crop scores damped (they run hotter: the
model never saw zoomed road texture in training). The result, in docs/model.md, is why the agent does not tile.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import load_detector
from edge_agent.detect.nms import nms
from edge_agent.lab.evaluate import (
    EVAL_SCORE_FLOOR,
    add_image,
    label_path,
    list_dataset_images,
    read_image,
    read_yolo_labels,
    summarize,
)
from models.data import DEFAULT_SURVEY
from models.pipeline import validation_highways

EDGE_PX = 4  # a crop box this close to an inner crop edge is cut in two: the whole frame judges it
TWO_AHEAD = ((0.05, 0.10, 0.55, 0.62), (0.45, 0.10, 0.95, 0.62))  # the road ahead, left and right halves
# (name, crops as fractions x0, y0, x1, y1 of the frame, factor on crop scores, widest crop box kept in px)
VARIANTS = (
    ("whole frame only", (), 1.0, None),
    ("+ 2 crops of the road ahead", TWO_AHEAD, 1.0, None),
    ("+ 1 band across the road ahead", ((0.10, 0.10, 0.90, 0.60),), 1.0, None),
    ("+ 4 quadrants", ((0, 0.1, 0.55, 0.62), (0.45, 0.1, 1, 0.62), (0, 0.5, 0.55, 1), (0.45, 0.5, 1, 1)), 1.0, None),
    ("+ 2 crops, crop scores x0.6", TWO_AHEAD, 0.6, None),
    ("+ 2 crops, only boxes < 40 px, x0.7", TWO_AHEAD, 0.7, 40),
)


def detections(detector, img: np.ndarray, crops, damp: float, widest: float | None):
    h, w = img.shape[:2]
    out, placement = detector.infer(img)
    found = [(d.x1, d.y1, d.x2, d.y2, d.score, d.class_id) for d in detector.decode(out, placement, EVAL_SCORE_FLOOR)]
    for fx0, fy0, fx1, fy1 in crops:
        x0, y0, x1, y1 = int(fx0 * w), int(fy0 * h), int(fx1 * w), int(fy1 * h)
        out, placement = detector.infer(np.ascontiguousarray(img[y0:y1, x0:x1]))
        for d in detector.decode(out, placement, EVAL_SCORE_FLOOR):
            cut = ((d.x1 < EDGE_PX and x0 > 0) or (d.y1 < EDGE_PX and y0 > 0)
                   or (d.x2 > x1 - x0 - EDGE_PX and x1 < w) or (d.y2 > y1 - y0 - EDGE_PX and y1 < h))
            if not cut and (widest is None or d.x2 - d.x1 < widest):
                found.append((d.x1 + x0, d.y1 + y0, d.x2 + x0, d.y2 + y0, d.score * damp, d.class_id))
    arr = np.array(found, np.float32).reshape(-1, 6)
    if crops and len(arr):
        arr = arr[nms(arr[:, :4], arr[:, 4], arr[:, 5].astype(np.int64), 0.5, max_detections=len(arr))]
    return arr[:, :4], arr[:, 4], arr[:, 5].astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--survey", type=Path, default=DEFAULT_SURVEY)
    args = parser.parse_args()
    detector = load_detector(DetectorConfig(model=args.model))
    folder = validation_highways(args.survey)
    images = list_dataset_images(folder)
    print(f"{len(images)} frames of the validation highways; AP50 pothole / crack")
    for name, crops, damp, widest in VARIANTS:
        records: dict = {}
        for path in images:
            img = read_image(path)
            gt_boxes, gt_cls = read_yolo_labels(label_path(folder, path), img.shape[1], img.shape[0])
            add_image(records, *detections(detector, img, crops, damp, widest), gt_boxes, gt_cls)
        ap = {c: m.ap50 for c, m in summarize(records, 0.2).items()}
        print(f"  {name:<40s} {ap.get(0, 0):.3f} / {ap.get(1, 0):.3f}  ({1 + len(crops)} passes per frame)", flush=True)


if __name__ == "__main__":
    main()
