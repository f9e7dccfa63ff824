"""Where the detector goes wrong on the validation highways: every box and every true defect at the working
thresholds, sorted into kinds, and a picture of the worst of each.

    python -m models.error_breakdown [--model bundled] [--out models/bundled/errors.jpg | FOLDER]

A box that is not a match at IoU 0.5 is one of: `misplaced` (it overlaps a true defect of its class: a second
box on it, or one too small or shifted: on the road the same object), `other
class` (it lies on a true defect of the other class) or `on nothing marked` (the false alarms a map would show).
A true defect is `found`, `boxed badly` (a box of its class overlaps it, not at IoU 0.5), `called the other
class` or `missed`; each by its height in the frame, since far potholes are small. "Overlaps" is IoU >= 0.1.
`python -m models.card` puts the figures in the model card; `make model` does all of it.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import load_detector
from edge_agent.detect.nms import box_iou
from edge_agent.lab.evaluate import match_pairs
from models.data import CLASSES, DEFAULT_SURVEY
from models.pipeline import BUNDLE, labelled_frames, validation_highways

TOUCH_IOU = 0.1
HEIGHT_BANDS = ((0, 13, "under 13 px"), (13, 24, "13-24 px"), (24, 10_000, "24 px and over"))
METRES_PER_FRAME = 5.0  # the survey's frame spacing (its README)
SHEET_TILES = 12  # crops per row of the picture
BOX_KINDS = ("match", "misplaced", "other class", "on nothing marked")
TRUTH_KINDS = ("found", "boxed badly", "called the other class", "missed")


@dataclass
class Example:
    """One box or true defect worth looking at: the frame, the box, a label and how to rank it."""

    path: Path
    box: np.ndarray
    label: str
    rank: float


def band(box: np.ndarray) -> str:
    h = box[3] - box[1]
    return next(name for lo, hi, name in HEIGHT_BANDS if lo <= h < hi)


def classify_frame(boxes, scores, classes, gt, gc, cls: int) -> tuple[list[str], list[str]]:
    """Kinds of this frame's boxes of CLS (best score first) and of its true defects of CLS."""
    mine, truth, others = classes == cls, gt[gc == cls], gt[gc != cls]
    order = np.argsort(-scores[mine], kind="stable")
    b = boxes[mine][order]
    tp, found = match_pairs(b, scores[mine][order], truth)
    box_kinds = []
    for box, hit in zip(b, tp, strict=True):
        if hit:
            box_kinds.append("match")
        elif len(truth) and box_iou(box[None], truth).max() >= TOUCH_IOU:
            box_kinds.append("misplaced")
        elif len(others) and box_iou(box[None], others).max() >= TOUCH_IOU:
            box_kinds.append("other class")
        else:
            box_kinds.append("on nothing marked")
    theirs = boxes[(classes != cls)]
    truth_kinds = []
    for j, t in enumerate(truth):
        if found[j]:
            truth_kinds.append("found")
        elif len(b) and box_iou(t[None], b).max() >= TOUCH_IOU:
            truth_kinds.append("boxed badly")
        elif len(theirs) and box_iou(t[None], theirs).max() >= TOUCH_IOU:
            truth_kinds.append("called the other class")
        else:
            truth_kinds.append("missed")
    return box_kinds, truth_kinds


def breakdown(detector, folder: Path) -> tuple[dict, dict[str, list[Example]]]:
    result: dict = {"frames": 0, "km": 0.0}
    examples: dict[str, list[Example]] = {}
    for name in CLASSES:
        result[name] = {"boxes": Counter(), "truth": {b: Counter() for _, _, b in HEIGHT_BANDS}}
    for path, boxes, scores, classes, gt, gc in labelled_frames(detector, folder, "validation highways"):
        result["frames"] += 1
        for cls, name in enumerate(CLASSES):
            box_kinds, truth_kinds = classify_frame(boxes, scores, classes, gt, gc, cls)
            result[name]["boxes"].update(box_kinds)
            mine = classes == cls
            order = np.argsort(-scores[mine], kind="stable")
            for box, score, kind in zip(boxes[mine][order], scores[mine][order], box_kinds, strict=True):
                if kind == "on nothing marked":
                    example = Example(path, box, f"{score:.2f}", score)
                    examples.setdefault(f"{name} boxes on nothing marked", []).append(example)
            for t, kind in zip(gt[gc == cls], truth_kinds, strict=True):
                result[name]["truth"][band(t)][kind] += 1
                if kind == "missed":
                    examples.setdefault(f"{name}s missed", []).append(Example(path, t, band(t), t[3] - t[1]))
    result["km"] = result["frames"] * METRES_PER_FRAME / 1000
    return result, examples


def crop(ex: Example, size: int = 120) -> np.ndarray:
    """The box with its surroundings (at least 3x its size), drawn, scaled to a square tile."""
    img = cv2.imread(str(ex.path), cv2.IMREAD_COLOR)
    x1, y1, x2, y2 = ex.box
    half = max(x2 - x1, y2 - y1, 20) * 1.5
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    cv2.rectangle(img, (round(x1), round(y1)), (round(x2), round(y2)), (0, 0, 255), 1)
    m = int(np.ceil(half)) + 1  # a black margin, so that a box at the edge keeps its place in the tile
    pad = cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_CONSTANT)
    tile = pad[round(cy - half) + m:round(cy + half) + m, round(cx - half) + m:round(cx + half) + m]
    tile = cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)
    cv2.putText(tile, ex.label, (3, size - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def picture(examples: dict[str, list[Example]], out: Path) -> Path:
    """One row per kind: its highest-scoring false boxes, or its largest misses (the ones that should be easy)."""
    rows = []
    for kind in sorted(examples):
        worst = sorted(examples[kind], key=lambda e: -e.rank)[:SHEET_TILES]
        tiles = [crop(e) for e in worst] + [np.zeros((120, 120, 3), np.uint8)] * (SHEET_TILES - len(worst))
        head = np.zeros((22, 120 * SHEET_TILES, 3), np.uint8)
        cv2.putText(head, kind, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        rows += [head, np.hstack(tiles)]
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return out


def report(result: dict) -> None:
    print(f"{result['frames']} frames of the validation highways (~{result['km']:.1f} km), working thresholds")
    for name in CLASSES:
        boxes, truth = result[name]["boxes"], result[name]["truth"]
        nothing = boxes["on nothing marked"]
        print(f"{name} boxes: " + ", ".join(f"{k} {boxes[k]}" for k in BOX_KINDS)
              + f" ({nothing / result['km']:.0f} per km on nothing marked)")
        for _, _, b in HEIGHT_BANDS:
            counts = {k: truth[b][k] for k in TRUTH_KINDS}
            print(f"  true {name}s {b:<15} {sum(counts.values()):>4}: "
                  + ", ".join(f"{k} {v}" for k, v in counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--survey", type=Path, default=DEFAULT_SURVEY)
    parser.add_argument("--out", type=Path, default=BUNDLE / "errors.jpg",
                        help="the picture (.jpg); a folder gets errors.jpg, and errors.json beside it either way")
    args = parser.parse_args()
    if args.out.suffix.lower() not in (".jpg", ".jpeg"):  # a folder: cv2 found no writer for a name without one
        args.out = args.out / "errors.jpg"
    detector = load_detector(DetectorConfig(model=args.model))
    result, examples = breakdown(detector, validation_highways(args.survey))
    report(result)
    print(f"picture: {picture(examples, args.out)}")
    (args.out.parent / "errors.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"figures: {args.out.parent / 'errors.json'} (python -m models.card puts them in the card)")


if __name__ == "__main__":
    main()
