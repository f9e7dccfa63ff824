"""Letterbox: fit a frame into the model's input keeping its aspect ratio, and map boxes back.

The padding is split evenly on both sides (as the Ultralytics exporters and our own training do), with the
grey value 114, so models trained either way see what they were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How a frame was placed in the model input: input = frame * scale + (pad_x, pad_y)."""

    scale: float
    pad_x: float
    pad_y: float
    frame_width: int
    frame_height: int

    def to_frame(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Model-input pixel boxes [N,4] -> frame pixel boxes, clipped to the frame."""
        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - self.pad_x) / self.scale
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - self.pad_y) / self.scale
        return boxes.clip(0, [self.frame_width, self.frame_height, self.frame_width, self.frame_height])

    def to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]] * self.scale + self.pad_x
        boxes[:, [1, 3]] = boxes[:, [1, 3]] * self.scale + self.pad_y
        return boxes


def letterbox(frame: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Letterbox]:
    """Resize frame (HxWx3) into a width x height canvas without distortion; returns (canvas, placement)."""
    fh, fw = frame.shape[:2]
    if fh == 0 or fw == 0:
        raise ValueError(f"empty frame {frame.shape}")
    scale = min(width / fw, height / fh)
    nw, nh = max(1, round(fw * scale)), max(1, round(fh * scale))
    pad_x, pad_y = (width - nw) // 2, (height - nh) // 2
    canvas = np.full((height, width, 3), PAD_VALUE, np.uint8)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas[pad_y:pad_y + nh, pad_x:pad_x + nw] = cv2.resize(frame, (nw, nh), interpolation=interp)
    return canvas, Letterbox(scale, float(pad_x), float(pad_y), fw, fh)


def to_blob(canvas_bgr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """HxWx3 BGR uint8 -> 1x3xHxW RGB, scaled to 0..1 for float inputs, raw 0..255 for uint8 inputs."""
    rgb = canvas_bgr[..., ::-1].transpose(2, 0, 1)[None]
    if np.dtype(dtype) == np.uint8:
        return np.ascontiguousarray(rgb)
    return np.ascontiguousarray(rgb, dtype=dtype) / np.asarray(255.0, dtype=dtype)
