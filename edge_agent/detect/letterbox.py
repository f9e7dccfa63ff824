"""Letterbox: fit a frame into the model's input keeping its aspect ratio, and map boxes back.

The padding is split evenly on both sides (as the Ultralytics exporters and our own training do), with the
grey value 114, so models trained either way see what they were trained on.

Blobs are NCHW (PyTorch/ONNX exports) or, with `channels_last`, NHWC (models converted from TensorFlow/TFLite).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import DTypeLike

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


def placement_for(frame_width: int, frame_height: int, width: int, height: int) -> Letterbox:
    """Where a frame_width x frame_height frame goes in a width x height input (scale, centred padding)."""
    if frame_height <= 0 or frame_width <= 0:
        raise ValueError(f"empty frame {frame_height}x{frame_width}")
    scale = min(width / frame_width, height / frame_height)
    nw, nh = max(1, round(frame_width * scale)), max(1, round(frame_height * scale))
    return Letterbox(scale, float((width - nw) // 2), float((height - nh) // 2), frame_width, frame_height)


def letterbox(frame: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Letterbox]:
    """Resize frame (HxWx3) into a new width x height canvas without distortion; returns (canvas, placement)."""
    placement = placement_for(frame.shape[1], frame.shape[0], width, height)
    canvas = np.full((height, width, 3), PAD_VALUE, np.uint8)
    _resize_into(frame, canvas, placement)
    return canvas, placement


def _resize_into(frame: np.ndarray, canvas: np.ndarray, placement: Letterbox) -> None:
    x, y = int(placement.pad_x), int(placement.pad_y)
    nw = max(1, round(placement.frame_width * placement.scale))
    nh = max(1, round(placement.frame_height * placement.scale))
    interp = cv2.INTER_AREA if placement.scale < 1 else cv2.INTER_LINEAR
    region = canvas[y:y + nh, x:x + nw]
    if region.flags.c_contiguous:
        cv2.resize(frame, (nw, nh), dst=region, interpolation=interp)  # straight into the canvas, no temporary
    else:
        region[...] = cv2.resize(frame, (nw, nh), interpolation=interp)


def blob_shape(width: int, height: int, channels_last: bool = False) -> tuple[int, int, int, int]:
    """The model input's shape for one image: 1x3xHxW, or 1xHxWx3 for a channels-last (NHWC) model."""
    return (1, height, width, 3) if channels_last else (1, 3, height, width)


def to_blob(canvas_bgr: np.ndarray, dtype: DTypeLike, channels_last: bool = False) -> np.ndarray:
    """HxWx3 BGR uint8 -> a new RGB blob (1x3xHxW, or 1xHxWx3 channels-last), 0..1 for float inputs, raw 0..255
    for uint8 inputs."""
    blob = np.empty(blob_shape(canvas_bgr.shape[1], canvas_bgr.shape[0], channels_last), dtype)
    _fill_blob(canvas_bgr, blob, channels_last)
    return blob


def _fill_blob(canvas_bgr: np.ndarray, blob: np.ndarray, channels_last: bool = False) -> None:
    if channels_last:
        # Interleaved RGB is the canvas's own memory order: one colour conversion, no transpose.
        rgb = cv2.cvtColor(canvas_bgr, cv2.COLOR_BGR2RGB)
        if blob.dtype == np.uint8:
            blob[0] = rgb
        else:
            np.divide(rgb, blob.dtype.type(255), out=blob[0], casting="unsafe")
        return
    # Splitting into contiguous planes first is ~3x faster than one strided BGR->RGB, HWC->CHW numpy copy;
    # the arithmetic is unchanged (uint8 -> float, then / 255), so blobs are bit-identical to before.
    for channel, plane in enumerate(cv2.split(canvas_bgr)):
        out = blob[0, 2 - channel]  # BGR in, RGB out
        if blob.dtype == np.uint8:
            out[...] = plane
        else:
            np.divide(plane, blob.dtype.type(255), out=out, casting="unsafe")


class Preprocessor:
    """Letterbox + blob into buffers kept from frame to frame, for one model input (width x height, dtype).

    Allocating a fresh canvas and blob each frame costs about as much as filling them; here the canvas's padding
    is painted once per frame size, and each frame only resizes into the canvas and converts into the blob.
    The returned blob is overwritten by the next call: not thread-safe, one Preprocessor per detector/pipeline.
    """

    def __init__(self, width: int, height: int, dtype: np.dtype, channels_last: bool = False) -> None:
        self.width, self.height, self.channels_last = width, height, channels_last
        self.canvas = np.full((height, width, 3), PAD_VALUE, np.uint8)
        self.blob = np.empty(blob_shape(width, height, channels_last), np.dtype(dtype))
        self._placement: Letterbox | None = None

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Frame (HxWx3 BGR uint8) -> (1x3xHxW or 1xHxWx3 blob, placement); the blob is this object's buffer."""
        fh, fw = frame.shape[:2]
        placement = self._placement
        if placement is None or (placement.frame_width, placement.frame_height) != (fw, fh):
            placement = placement_for(fw, fh, self.width, self.height)
            self.canvas[...] = PAD_VALUE  # the padding differs with the frame's aspect ratio
            self._placement = placement
        _resize_into(frame, self.canvas, placement)
        _fill_blob(self.canvas, self.blob, self.channels_last)
        return self.blob, placement
