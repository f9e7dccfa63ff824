"""Detection metrics: AP50 (all-point interpolation, as in VOC2010+/COCO-style matching), P/R/F1.

Matching per image and class: detections in descending score order, each takes the unmatched ground-truth
box of its class with the highest IoU if that IoU >= the threshold; otherwise it is a false positive.
AP is the area under the precision envelope (precision made monotonically non-increasing) over recall.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.detect.nms import box_iou

log = logging.getLogger(__name__)


@dataclass
class ClassRecord:
    """Every detection's score and whether it was a true positive, plus the number of ground-truth boxes."""

    scores: list[float] = field(default_factory=list)
    tp: list[bool] = field(default_factory=list)
    n_gt: int = 0


@dataclass
class ClassMetrics:
    ap50: float
    precision: float
    recall: float
    f1: float
    n_gt: int
    n_det: int
    curve_recall: np.ndarray
    curve_precision: np.ndarray
    best_f1: float = 0.0
    best_f1_threshold: float = 0.0


def match_image(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                iou_threshold: float = 0.5) -> np.ndarray:
    """True-positive flags for one image and one class, in the order of det_scores sorted descending."""
    return match_pairs(det_boxes, det_scores, gt_boxes, iou_threshold)[0]


def match_pairs(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """match_image's flags, and which ground-truth boxes a detection took."""
    order = np.argsort(-np.asarray(det_scores), kind="stable")
    det_boxes = np.asarray(det_boxes).reshape(-1, 4)[order]
    tp = np.zeros(len(order), bool)
    taken = np.zeros(len(gt_boxes), bool)
    if len(gt_boxes) == 0 or len(order) == 0:
        return tp, taken
    ious = box_iou(det_boxes, gt_boxes)
    for i in range(len(order)):
        cand = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            taken[j] = True
            tp[i] = True
    return tp, taken


def add_image(records: dict[int, ClassRecord], det_boxes: np.ndarray, det_scores: np.ndarray,
              det_classes: np.ndarray, gt_boxes: np.ndarray, gt_classes: np.ndarray,
              iou_threshold: float = 0.5) -> None:
    """Accumulate one image's detections and ground truth into per-class records."""
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    det_classes = np.asarray(det_classes).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes).reshape(-1)
    for c in set(det_classes.tolist()) | set(gt_classes.tolist()):
        rec = records.setdefault(int(c), ClassRecord())
        dm, gm = det_classes == c, gt_classes == c
        scores = det_scores[dm]
        rec.tp.extend(match_image(det_boxes[dm], scores, gt_boxes[gm], iou_threshold).tolist())
        rec.scores.extend(np.sort(scores)[::-1].tolist())
        rec.n_gt += int(gm.sum())


def all_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the interpolated PR curve at every recall change (no 11/101-point sampling)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[idx + 1] - r[idx]) * p[idx + 1]))


def class_metrics(rec: ClassRecord, score_threshold: float) -> ClassMetrics:
    scores = np.asarray(rec.scores, np.float64)
    tp = np.asarray(rec.tp, bool)
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    recall = ctp / rec.n_gt if rec.n_gt else np.zeros(len(tp))
    precision = ctp / np.maximum(ctp + cfp, 1)
    ap = all_point_ap(recall, precision) if rec.n_gt else 0.0
    kept = scores >= score_threshold
    n_tp = int(tp[kept].sum())
    n_det = int(kept.sum())
    p = n_tp / n_det if n_det else 0.0
    r = n_tp / rec.n_gt if rec.n_gt else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    f1s = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1s)) if len(f1s) else 0
    return ClassMetrics(ap, p, r, f1, rec.n_gt, n_det, recall, precision,
                        float(f1s[best]) if len(f1s) else 0.0, float(scores[best]) if len(scores) else 0.0)


def summarize(records: dict[int, ClassRecord], score_threshold: float | dict[int, float]) -> dict[int, ClassMetrics]:
    """score_threshold: one for all classes, or per class id (classes not in it use the lowest given)."""
    if isinstance(score_threshold, dict):
        floor = min(score_threshold.values(), default=0.0)
        return {c: class_metrics(rec, score_threshold.get(c, floor)) for c, rec in sorted(records.items())}
    return {c: class_metrics(rec, score_threshold) for c, rec in sorted(records.items())}


# ------------------------------------------------------------------------------------- datasets and models
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
EVAL_SCORE_FLOOR = 0.001  # AP needs the whole ranking, not only what passes the working threshold


def list_dataset_images(root: Path) -> list[Path]:
    """Images of a YOLO-layout folder (root/images/...), or of a plain folder of images."""
    folder = root / "images" if (root / "images").is_dir() else root
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def read_image(path: Path) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        log.warning("skipping unreadable image %s", path)
    return img


def label_path(root: Path, image: Path) -> Path:
    rel = image.relative_to(root / "images")
    return (root / "labels" / rel).with_suffix(".txt")


def read_yolo_labels(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """`class cx cy w h` normalised lines -> (xyxy pixel boxes [M,4], class ids [M]); no file = no objects.
    A line that is not a box (another field count, a negative or fractional class, a centre outside the image,
    no size) is skipped with a warning naming the file and line."""
    rows = []
    if path.exists():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.split():
                continue
            row = _label_row(line)
            if row is None:
                log.warning("%s:%d: not a YOLO box line (class cx cy w h, fractions of the image): %r", path, n,
                            line)
            else:
                rows.append(row)
    if not rows:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    arr = np.array(rows, np.float32)
    cx, cy, w, h = arr[:, 1] * width, arr[:, 2] * height, arr[:, 3] * width, arr[:, 4] * height
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    return boxes.clip(0, [width, height, width, height]).astype(np.float32), arr[:, 0].astype(np.int64)


_LABEL_SLACK = 1e-3  # exporters write 1.0000001 for a box that touches the edge


def _label_row(line: str) -> list[float] | None:
    parts = line.split()
    if len(parts) != 5:
        return None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    cls, cx, cy, w, h = values
    if not all(np.isfinite(values)) or cls < 0 or cls != int(cls):
        return None
    inside = all(-_LABEL_SLACK <= v <= 1 + _LABEL_SLACK for v in (cx, cy)) and all(
        0 < v <= 1 + _LABEL_SLACK for v in (w, h))
    return values if inside else None


def check_label_classes(label_file: Path, gt_cls: np.ndarray, names: list[str]) -> None:
    """Labels of a class the model does not have would score as a class it never finds: refuse the pairing."""
    if names and len(gt_cls) and int(gt_cls.max()) >= len(names):
        raise ValueError(f"{label_file}: class {int(gt_cls.max())}, but the model has {len(names)} classes "
                         f"({', '.join(names)}): the labels and the model do not match (class ids follow the "
                         "model's order; --names names them)")


def parse_label_map(text: str, names: list[str]) -> dict[int, int]:
    """'0=D40,1=D00' (a label id = a model class, by name or id) -> {label id: model class id}."""
    lookup = {name.lower(): i for i, name in enumerate(names)}
    out: dict[int, int] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        label, sep, cls = (x.strip() for x in item.partition("="))
        if not sep or not label.isdigit():
            raise ValueError(f"{item!r}: write LABEL_ID=MODEL_CLASS, e.g. 0=D40")
        if cls.lower() in lookup:
            out[int(label)] = lookup[cls.lower()]
        elif cls.isdigit() and int(cls) < len(names):
            out[int(label)] = int(cls)
        else:
            raise ValueError(f"{item!r}: the model has no class {cls!r} (it has {', '.join(names)})")
    return out


def map_labels(boxes: np.ndarray, classes: np.ndarray, label_map: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered to the model's classes by LABEL_MAP; labels of ids not in it are left out."""
    keep = np.array([int(c) in label_map for c in classes], bool)
    return boxes[keep], np.array([label_map[int(c)] for c in classes[keep]], np.int64)


def evaluate_dataset(detector: Any, root: Path, score_threshold: float | None = None,
                     pseudo_labels_from: Any = None, progress: Any = None,
                     label_map: dict[int, int] | None = None, timed: bool = True) -> dict:
    """Run the detector over a YOLO-layout folder: AP50 per class and overall, P/R/F1 at the working
    threshold, latency (letterbox + inference + decoding) median and p95 (with TIMED; a mirror-pass detector
    then looks at each image twice more, once as the agent does, so `timed=False` halves its time).

    With label_map ({label id: model class id}) the labels are renumbered to the model's classes, and labels of
    ids not in it left out: a model whose classes are numbered otherwise (RDD2022's D00..D40) matched the labels
    by id and scored near 0 without a word.

    With pseudo_labels_from (another detector), its detections at its own threshold are the ground truth:
    how quantization is judged on a folder without labels.
    """
    root = Path(root)
    thresholds = getattr(detector, "thresholds", ())
    if score_threshold is None and thresholds:
        thr: float | dict[int, float] = dict(enumerate(thresholds))  # each class at its working threshold
    else:
        thr = detector.score_threshold if score_threshold is None else score_threshold
    images = list_dataset_images(root)
    if not images:
        raise ValueError(f"no images in {root}/images")
    has_labels = (root / "labels").is_dir()
    if not has_labels and pseudo_labels_from is None:
        raise ValueError(f"{root} has no labels/ folder (YOLO layout: images/ + labels/)")
    records: dict[int, ClassRecord] = {}
    latencies = []
    n_used = 0
    names = list(getattr(detector.info, "classes", ()))
    for path in images:
        img = read_image(path)
        if img is None:
            continue
        n_used += 1
        h, w = img.shape[:2]
        if pseudo_labels_from is not None:
            ref = pseudo_labels_from.detect(img)
            gt_boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in ref], np.float32).reshape(-1, 4)
            gt_cls = np.array([d.class_id for d in ref], np.int64)
        else:
            gt_boxes, gt_cls = read_yolo_labels(label_path(root, path), w, h)
            if label_map is not None:
                gt_boxes, gt_cls = map_labels(gt_boxes, gt_cls, label_map)
            check_label_classes(label_path(root, path), gt_cls, names)
        # Latency is the working path (threshold thr); AP decodes the same output again down to the floor.
        t0 = time.monotonic()
        if getattr(getattr(detector, "cfg", None), "mirror_pass", False):  # two passes fused: nothing to decode again
            if timed:
                detector.detect(img)
                latencies.append(1000 * (time.monotonic() - t0))
            dets = detector.detect(img, EVAL_SCORE_FLOOR)
        else:
            out, placement = detector.infer(img)
            detector.decode(out, placement)
            latencies.append(1000 * (time.monotonic() - t0))
            dets = detector.decode(out, placement, EVAL_SCORE_FLOOR)
        add_image(records, np.array([[d.x1, d.y1, d.x2, d.y2] for d in dets], np.float32).reshape(-1, 4),
                  np.array([d.score for d in dets]), np.array([d.class_id for d in dets], np.int64), gt_boxes, gt_cls)
        if progress:
            progress()
    metrics = summarize(records, thr)
    per_class = {}
    for c, m in metrics.items():
        name = names[c] if 0 <= c < len(names) else str(c)
        per_class[name] = {"ap50": m.ap50, "precision": m.precision, "recall": m.recall, "f1": m.f1,
                           "threshold": thr.get(c, 0.0) if isinstance(thr, dict) else thr,
                           "n_gt": m.n_gt, "n_det": m.n_det, "best_f1": m.best_f1,
                           "best_f1_threshold": m.best_f1_threshold}
    with_gt = [m for m in metrics.values() if m.n_gt > 0]
    n_tp = sum(round(m.recall * m.n_gt) for m in with_gt)
    n_gt = sum(m.n_gt for m in with_gt)
    n_det = sum(m.n_det for m in metrics.values())
    precision = n_tp / n_det if n_det else 0.0
    recall = n_tp / n_gt if n_gt else 0.0
    return {
        "ap50": float(np.mean([m.ap50 for m in with_gt])) if with_gt else 0.0,
        "per_class": per_class,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "score_threshold": ({(names[c] if 0 <= c < len(names) else str(c)): t for c, t in thr.items()}
                            if isinstance(thr, dict) else thr),
        "latency_ms": {"median": float(np.median(latencies)), "p95": float(np.percentile(latencies, 95)),
                       "runs": len(latencies)} if timed else None,
        "images": n_used,
        "curves": {(names[c] if 0 <= c < len(names) else str(c)): (m.curve_recall, m.curve_precision)
                   for c, m in metrics.items()},
    }


def plot_pr(result: dict, out: Path, title: str = "") -> Path:
    """PR curve per class (PNG), AP50 in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for name, (rec, prec) in result["curves"].items():
        ap = result["per_class"].get(name, {}).get("ap50", 0.0)
        ax.plot(np.concatenate([[0], rec]), np.concatenate([[1], np.maximum.accumulate(prec[::-1])[::-1]])
                if len(prec) else [1], label=f"{name} AP50 {ap:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title or f"PR curve, IoU 0.5 (AP50 {result['ap50']:.3f})", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
