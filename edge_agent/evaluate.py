"""Detection metrics: AP50 (all-point interpolation, as in VOC2010+/COCO-style matching), P/R/F1.

Matching per image and class: detections in descending score order, each takes the unmatched ground-truth
box of its class with the highest IoU if that IoU >= the threshold; otherwise it is a false positive.
AP is the area under the precision envelope (precision made monotonically non-increasing) over recall.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between [N,4] and [M,4] xyxy boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                iou_threshold: float = 0.5) -> np.ndarray:
    """True-positive flags for one image and one class, in the order of det_scores sorted descending."""
    order = np.argsort(-np.asarray(det_scores), kind="stable")
    det_boxes = np.asarray(det_boxes).reshape(-1, 4)[order]
    tp = np.zeros(len(order), bool)
    if len(gt_boxes) == 0 or len(order) == 0:
        return tp
    ious = box_iou(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    for i in range(len(order)):
        cand = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            taken[j] = True
            tp[i] = True
    return tp


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
    return ClassMetrics(ap, p, r, f1, rec.n_gt, n_det, recall, precision)


def summarize(records: dict[int, ClassRecord], score_threshold: float) -> dict[int, ClassMetrics]:
    return {c: class_metrics(rec, score_threshold) for c, rec in sorted(records.items())}
