"""Class-aware non-maximum suppression (OpenCV's batched NMS: boxes of different classes never suppress
each other)."""

from __future__ import annotations

import cv2
import numpy as np


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
        max_detections: int = 300) -> np.ndarray:
    """Indices of the kept boxes, best score first."""
    boxes_xyxy = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    if len(boxes_xyxy) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], axis=1)
    kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), np.asarray(scores, np.float32).tolist(),
                                   np.asarray(class_ids, np.int32).tolist(), 0.0, float(iou_threshold))
    keep = np.asarray(kept, np.int64).reshape(-1)
    keep = keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]
    return keep[:max_detections]


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
