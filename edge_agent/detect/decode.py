"""Output layouts of YOLO-family ONNX exports, recognised from the output's shape, and their decoding.

- yolov5:  [1, N, 5 + nc]  cx, cy, w, h, objectness, class probabilities (score = objectness * class prob)
- yolov8:  [1, 4 + nc, N]  cx, cy, w, h, class scores (YOLOv8/11 and this project's own model)
- end2end: [1, K, 6]       x1, y1, x2, y2, score, class (NMS-free YOLOv10 / YOLO26 exports)

Boxes come out in model-input pixels; the caller maps them back through the letterbox. Models converted from
TensorFlow/TFLite give their boxes as fractions of the input instead: `box_extent` tells them apart at load and
`fractions_to_pixels` scales their output.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from edge_agent.detect.nms import nms


class Layout(StrEnum):
    YOLOV5 = "yolov5"
    YOLOV8 = "yolov8"
    END2END = "end2end"


class LayoutError(ValueError):
    """The output shape fits none of the known layouts, or contradicts the class names."""


@dataclass(frozen=True)
class Candidates:
    """Every location's best class and score, before thresholding: boxes xyxy [N,4], scores [N], classes [N]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def anchor_count(width: int, height: int, strides: tuple[int, ...] = (8, 16, 32), round_up: bool = True) -> int:
    """Grid locations of a standard three-level YOLO head for this input size. Stride-2 convolutions with
    padding round each level's size up, so a size that is not a multiple of 32 (600x400) has ceil(w/s) x
    ceil(h/s) locations per level (ROUND_UP false: floor, as unpadded ones do)."""
    if round_up:
        return sum(-(-width // s) * -(-height // s) for s in strides)
    return sum((width // s) * (height // s) for s in strides)


def detect_layout(shape: tuple[int, ...], num_classes: int | None, input_wh: tuple[int, int],
                  end2end_hint: bool = False) -> Layout:
    """Recognise the layout from a concrete output shape [1, A, B] (and the class count when known)."""
    if len(shape) != 3 or shape[0] != 1:
        raise LayoutError(f"output shape {list(shape)} is not [1, A, B]")
    _, a, b = shape
    if 4 in (a, b):
        raise LayoutError(f"output shape {list(shape)} holds boxes only, the class scores are in another output "
                          "(a TensorFlow Object Detection API / TFLite SSD export?); export one YOLO-style output "
                          "with boxes and class scores together")
    if end2end_hint and b == 6:
        return Layout.END2END
    # [1, K, 6] is also a one-class YOLOv5 head; those have 3 anchors per location of a P5 or P6 head.
    v5_rows = {3 * anchor_count(*input_wh, strides=strides, round_up=up)
               for strides in ((8, 16, 32), (8, 16, 32, 64)) for up in (True, False)}
    if b == 6 and a not in v5_rows:
        return Layout.END2END
    if a < b:
        layout = Layout.YOLOV8
        nc = a - 4
    else:
        layout = Layout.YOLOV5
        nc = b - 5
    if nc < 1:
        raise LayoutError(f"output shape {list(shape)} leaves {nc} class columns")
    if num_classes is not None and nc != num_classes:
        raise LayoutError(f"output shape {list(shape)} read as {layout} has {nc} classes, but there are "
                          f"{num_classes} class names")
    return layout


def candidates(output: np.ndarray, layout: Layout) -> Candidates:
    """All candidate boxes of one image (batch index 0), xyxy in model-input pixels."""
    out = np.asarray(output, np.float32)[0]
    if layout is Layout.END2END:
        return Candidates(out[:, :4].copy(), out[:, 4].copy(), out[:, 5].round().astype(np.int64))
    if layout is Layout.YOLOV8:
        out = out.T
        box, cls = out[:, :4], out[:, 4:]
    else:
        box, cls = out[:, :4], out[:, 5:] * out[:, 4:5]
    classes = cls.argmax(1)
    scores = cls[np.arange(len(cls)), classes]
    xy, half = box[:, :2], box[:, 2:4] / 2
    return Candidates(np.concatenate([xy - half, xy + half], 1), scores, classes)


def box_extent(outputs: list[np.ndarray], layout: Layout) -> float:
    """How far the box coordinates of these raw outputs reach: about the input size for boxes in pixels, about 1
    for boxes given as fractions of the input, 0 when there is no box to judge by.

    The 99th percentile of the non-zero coordinates: a few junk locations of a YOLO head reach well past the
    image (x2 up to ~1.8 in fractions), and end-to-end heads pad their rows with zeros."""
    coords = np.concatenate([np.abs(candidates(out, layout).boxes).ravel() for out in outputs])
    coords = coords[np.isfinite(coords) & (coords > 0)]
    return float(np.percentile(coords, 99)) if coords.size else 0.0


def fractions_to_pixels(output: np.ndarray, layout: Layout, input_wh: tuple[int, int]) -> np.ndarray:
    """Raw output with boxes as fractions of the input -> the same with boxes in input pixels (in place when the
    output is already float32: it is a fresh array from the session)."""
    out = np.asarray(output, np.float32)
    w, h = input_wh
    scale = np.array([w, h, w, h], np.float32)  # x and y alternate in both cx,cy,w,h and x1,y1,x2,y2
    if layout is Layout.YOLOV8:
        out[:, :4, :] *= scale[None, :, None]
    else:
        out[..., :4] *= scale
    return out


MAX_NMS_INPUT = 3000  # a low threshold on a 640 YOLOv5 head passes 25200 rows; NMS only needs the best


def decode(output: np.ndarray, layout: Layout, score_threshold: float, iou_threshold: float,
           max_detections: int) -> Candidates:
    """Threshold, then class-aware NMS (end-to-end models already did theirs)."""
    c = candidates(output, layout)
    keep = np.nonzero(c.scores >= score_threshold)[0]
    if len(keep) > MAX_NMS_INPUT:
        keep = keep[np.argpartition(-c.scores[keep], MAX_NMS_INPUT)[:MAX_NMS_INPUT]]
    if layout is not Layout.END2END and len(keep):
        keep = keep[nms(c.boxes[keep], c.scores[keep], c.classes[keep], iou_threshold, max_detections)]
    else:
        keep = keep[np.argsort(-c.scores[keep], kind="stable")][:max_detections]
    return Candidates(c.boxes[keep], c.scores[keep], c.classes[keep])
