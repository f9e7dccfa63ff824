"""Are the model's boxes the size of the masks' boxes? Per class, the ratio of true to predicted width and
height over matched pairs, and AP50 after scaling every box about its centre by a per-class factor fitted on
the TRAINING highways, judged on the validation highways.

    python -m models.box_bias [--model bundled]

AP50 at IoU 0.5 is sensitive to size on small boxes (a 12-px pothole boxed 10 px wide is already at 0.69), so a
model that boxes systematically small loses matches it found. The fit is a grid over width/height factors on
the training highways only: the validation highways must not choose the correction they then judge. The result,
in docs/model.md, is why the agent does not rescale boxes.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import load_detector
from edge_agent.detect.nms import box_iou
from edge_agent.lab.evaluate import EVAL_SCORE_FLOOR, add_image, list_dataset_images, summarize
from models.data import CLASSES, DEFAULT_SURVEY
from models.masks import write_yolo_split
from models.pipeline import CACHE, labelled_frames, validation_highways

FACTORS = (1.0, 1.04, 1.08, 1.12, 1.16)
MATCH_IOU = 0.3  # pairs for the size ratio: the same object, boxed well or not
RATIO_SCORE = 0.15  # only detections near the working thresholds speak for the size


Frame = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def frames(detector, folder: Path, label: str) -> list[Frame]:
    """(boxes, scores, classes, true boxes, true classes) per frame, decoded down to the evaluation floor."""
    return [rest for _, *rest in labelled_frames(detector, folder, label, EVAL_SCORE_FLOOR)]


def scaled(boxes: np.ndarray, fw: float, fh: float) -> np.ndarray:
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * np.array([fw, fh])
    return np.concatenate([c - half, c + half], axis=1)


def ap50(data, cls: int, fw: float = 1.0, fh: float = 1.0) -> float:
    records: dict = {}
    for boxes, scores, classes, gt, gc in data:
        m, g = classes == cls, gc == cls
        add_image(records, scaled(boxes[m], fw, fh), scores[m], classes[m], gt[g], gc[g])
    return summarize(records, 0.2)[cls].ap50 if cls in records else 0.0


def size_ratio(data, cls: int) -> tuple[float, float]:
    """Geometric mean of true / predicted width and height over matched pairs."""
    logs = []
    for boxes, scores, classes, gt, gc in data:
        m, g = (classes == cls) & (scores >= RATIO_SCORE), gt[gc == cls]
        if not m.any() or not len(g):
            continue
        iou = box_iou(boxes[m], g)
        best = iou.argmax(1)
        for det, j, ok in zip(boxes[m], best, iou.max(1) >= MATCH_IOU, strict=True):
            if ok:
                logs.append(np.log((g[j, 2:] - g[j, :2]) / np.maximum(det[2:] - det[:2], 1e-6)))
    return tuple(np.exp(np.mean(logs, axis=0))) if logs else (1.0, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--survey", type=Path, default=DEFAULT_SURVEY)
    args = parser.parse_args()
    detector = load_detector(DetectorConfig(model=args.model))
    val_folder = validation_highways(args.survey)
    val_stems = {p.stem for p in list_dataset_images(val_folder)}
    train_stems = sorted(p.stem for p in (args.survey / "images").iterdir() if p.stem not in val_stems)
    train = frames(detector, write_yolo_split(args.survey, train_stems, CACHE / "box_bias_train"), "training highways")
    val = frames(detector, val_folder, "validation highways")
    print("class     true/predicted w, h (train | val)    factor fitted on train   AP50 val before -> after")
    for cls, name in enumerate(CLASSES):
        fit = max(itertools.product(FACTORS, FACTORS), key=lambda f: ap50(train, cls, *f))
        rt, rv = size_ratio(train, cls), size_ratio(val, cls)
        print(f"{name:<8}  {rt[0]:.3f}, {rt[1]:.3f} | {rv[0]:.3f}, {rv[1]:.3f}          "
              f"w x{fit[0]:.2f}, h x{fit[1]:.2f}         {ap50(val, cls):.3f} -> {ap50(val, cls, *fit):.3f}",
              flush=True)


if __name__ == "__main__":
    main()
