"""The detector: an ONNX model of the YOLO family (or the bundled one) behind `detect(frame) -> [Detection]`.

`load_detector(cfg)` resolves the model ("bundled" or a path), checks its manifest's sha256, opens an ONNX
Runtime session (provider fallback, see detect_session), reads the input's layout (NCHW, or NHWC from
TensorFlow/TFLite conversions), size and class names, recognises the output layout, and runs the load check
(which is also the warm-up) on a test pattern and a sample road image: a model whose scores are all zero there
is refused, and boxes given as fractions of the input are recognised and scaled to pixels from then on. Every
problem is a `ModelError` with a clear message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import DTypeLike

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.decode import (
    Layout,
    LayoutError,
    box_extent,
    candidates,
    decode,
    detect_layout,
    fractions_to_pixels,
)
from edge_agent.detect.fusion import fuse, mirrored
from edge_agent.detect.letterbox import Preprocessor, blob_shape
from edge_agent.detect.manifest import (
    ModelError,
    check_manifest_sha,
    manifest_path_for,
    parse_imgsz,
    parse_names,
    parse_size,
    read_manifest,
    resolve_model_path,
)
from edge_agent.detect.session import open_session
from roadmon_contract.digest import sha256_file

__all__ = ["Detection", "Detector", "ModelError", "ModelInfo", "load_detector", "sample_road_image",
           "test_pattern"]

log = logging.getLogger(__name__)

DEFAULT_INPUT = 640
ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
# Boxes in pixels reach across the input (tens to hundreds of pixels); boxes as fractions of it stay within
# about 0..1 (a little over at the edges). Compared with detect_decode.box_extent.
FRACTION_EXTENT = 1.5


@dataclass(frozen=True)
class Detection:
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    class_name: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]  # (width, height)
    provider: str
    path: str
    layout: str = ""
    input_dtype: str = "float32"
    quantization: str = ""
    input_layout: str = "NCHW"  # or "NHWC" (TensorFlow/TFLite conversions)
    box_units: str = "pixels"  # or "fractions" of the input, scaled to pixels after inference
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class Detector:
    def __init__(self, session: Any, info: ModelInfo, layout: Layout, dtype: DTypeLike, cfg: DetectorConfig
                 ) -> None:
        self.session = session
        self.info = info
        self.layout = layout
        self.dtype = np.dtype(dtype)
        self.cfg = cfg
        self.thresholds = working_thresholds(info.classes, info.manifest, cfg)
        # The decoding floor: detections under their own class's threshold are dropped after it.
        self.score_threshold = min(self.thresholds, default=cfg.score_threshold)
        self._input_name = session.get_inputs()[0].name
        self._output_name = detections_output(session)
        # Canvas and blob reused from frame to frame: one Detector serves one pipeline (one thread) at a time.
        self._preprocess = Preprocessor(*info.input_size, self.dtype, channels_last=info.input_layout == "NHWC")
        self._unknown_classes: set[int] = set()

    def infer(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Any]:
        """Raw model output for one frame (boxes in input pixels), and the letterbox that placed it."""
        blob, placement = self._preprocess(_as_bgr(frame_bgr))
        out = self.session.run([self._output_name], {self._input_name: blob})[0]
        if self.info.box_units == "fractions":
            out = fractions_to_pixels(out, self.layout, self.info.input_size)
        return out, placement

    def detect(self, frame_bgr: np.ndarray, score_threshold: float | None = None) -> list[Detection]:
        """Detections in frame pixels, best first: each class cut at its working threshold, or every class at
        SCORE_THRESHOLD. With detector.mirror_pass the frame is looked at twice (edge_agent.detect.fusion)."""
        if not self.cfg.mirror_pass:
            out, placement = self.infer(frame_bgr)
            return self.decode(out, placement, score_threshold)
        frame = _as_bgr(frame_bgr)
        # A box one pass alone finds keeps half its score, so each pass is decoded down to half the cut.
        floor = (self.score_threshold if score_threshold is None else score_threshold) / 2
        passes = [self.decode(*self.infer(frame), floor),
                  mirrored(self.decode(*self.infer(np.ascontiguousarray(frame[:, ::-1])), floor), frame.shape[1])]
        fused = fuse(passes, self.cfg.iou_threshold)
        cut = [d for d in fused if d.score >= (self.threshold_for(d.class_id) if score_threshold is None
                                               else score_threshold)]
        return cut[:self.cfg.max_detections]

    def threshold_for(self, class_id: int) -> float:
        """The working score threshold of a class (ids the model names; others get score_threshold)."""
        return self.thresholds[class_id] if 0 <= class_id < len(self.thresholds) else self.cfg.score_threshold

    def _warn_unknown_class(self, cls: int) -> None:
        # End-to-end heads carry the class id as a number, so nothing at load bounds it; once per id, not per frame.
        if cls not in self._unknown_classes:
            self._unknown_classes.add(cls)
            log.warning("%s gave class id %d, outside its %d class names (%s): its boxes are dropped; check the "
                        "model's names (detector.class_names)", self.info.path, cls, len(self.info.classes),
                        ", ".join(self.info.classes))

    def decode(self, out: np.ndarray, placement: Any, score_threshold: float | None = None) -> list[Detection]:
        """Raw output -> detections in frame pixels, best first. Without score_threshold each class is cut at
        its own working threshold; with it, every class at that one score (evaluation floors)."""
        thr = self.score_threshold if score_threshold is None else score_threshold
        found = decode(out, self.layout, thr, self.cfg.iou_threshold, self.cfg.max_detections)
        boxes = placement.to_frame(found.boxes)
        names = self.info.classes
        dets = []
        for (x1, y1, x2, y2), score, cls in zip(boxes, found.scores, found.classes, strict=True):
            if x2 <= x1 or y2 <= y1:
                continue  # entirely in the padding
            if not 0 <= cls < len(names):
                self._warn_unknown_class(int(cls))
                continue
            if score_threshold is None and score < self.threshold_for(int(cls)):
                continue
            dets.append(Detection(float(x1), float(y1), float(x2), float(y2), float(score), int(cls), names[cls]))
        return dets


def working_thresholds(classes: tuple[str, ...], manifest: dict, cfg: DetectorConfig) -> tuple[float, ...]:
    """Per class: detector.class_thresholds, else the manifest's class_thresholds (unless the operator set
    detector.score_threshold, which then applies to every class), else score_threshold."""
    from_manifest = manifest.get("class_thresholds") or {}
    if "score_threshold" in cfg.model_fields_set or not isinstance(from_manifest, dict):
        from_manifest = {}
    out = []
    for name in classes:
        t = cfg.class_thresholds.get(name, from_manifest.get(name, cfg.score_threshold))
        out.append(float(t) if isinstance(t, int | float) and 0 <= t <= 1 else cfg.score_threshold)
    return tuple(out)


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or frame.size == 0:
        raise ValueError(f"expected an HxWx3 BGR image, got {getattr(frame, 'shape', type(frame))}")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    return frame


def load_detector(cfg: DetectorConfig, canvas: tuple[int, int] | None = None) -> Detector:
    """CANVAS (width, height) sizes a dynamic input instead of cfg.input_size, for timing a model on another's
    canvas (`model bench`)."""
    t0 = time.monotonic()
    path = resolve_model_path(cfg.model)
    digest = sha256_file(path)
    manifest_file = manifest_path_for(path, cfg.manifest)
    manifest = read_manifest(manifest_file) if manifest_file else {}
    if manifest_file:
        check_manifest_sha(manifest, manifest_file, digest)
    session = open_session(path, cfg.providers, cfg.threads)
    meta = session.get_modelmeta().custom_metadata_map or {}

    inp = session.get_inputs()[0]
    channels_last = _channels_last(inp.name, list(inp.shape), path)
    dtype = ONNX_DTYPES.get(inp.type)
    if dtype is None:
        raise ModelError(f"{path}: input type {inp.type} is not supported (float32, float16 or uint8)")
    input_size = _input_size(path, inp.shape, channels_last, meta, manifest, canvas or cfg.input_size)

    names = cfg.class_names or parse_names(manifest.get("classes")) or parse_names(meta.get("names"))
    layout, classes = _layout_and_classes(session, path, input_size, dtype, channels_last, names, meta, cfg)
    info = ModelInfo(
        name=str(manifest.get("name") or meta.get("description") or path.stem),
        version=str(manifest.get("version") or meta.get("version") or "unknown"),
        sha256=digest, classes=tuple(classes), input_size=input_size,
        provider=session.get_providers()[0], path=str(path), layout=str(layout),
        input_dtype=np.dtype(dtype).name, quantization=str(manifest.get("quantization", {}).get("format", "")
                                                            if isinstance(manifest.get("quantization"), dict)
                                                            else manifest.get("quantization", "")),
        input_layout="NHWC" if channels_last else "NCHW", manifest=manifest)
    detector = Detector(session, info, layout, dtype, cfg)
    probes = [detector.infer(img)[0] for img in _probe_images(*input_size)]  # also the warm-up
    detector.info = replace(info, box_units=_box_units(probes, layout, path, cfg.box_units))
    _load_check(probes, layout, path, cfg.sanity_check)
    log.info("detector %s %s (%s, %s %dx%d, boxes in %s, %s, classes %s) ready in %.2f s", info.name, info.version,
             layout, info.input_layout, *input_size, detector.info.box_units, info.provider, ",".join(classes),
             time.monotonic() - t0)
    return detector


def _channels_last(name: str, shape: list, path: Path) -> bool:
    """Whether the image input is NHWC (TensorFlow/TFLite conversions) rather than NCHW (PyTorch exports)."""
    if len(shape) != 4:
        raise ModelError(f"{path}: input '{name}' has rank {len(shape)} ({shape}); a detector takes one image, "
                         "rank 4: NCHW [1, 3, H, W] or NHWC [1, H, W, 3]")
    if shape[1] == 3:
        return False
    if shape[3] == 3:
        return True
    if not isinstance(shape[1], int):
        return False  # channels left dynamic: PyTorch exporters write NCHW
    raise ModelError(f"{path}: input '{name}' has shape {shape}, neither NCHW [1, 3, H, W] nor NHWC [1, H, W, 3]; "
                     "a detector takes one 3-channel (RGB) image")


def _input_size(path: Path, shape: list, channels_last: bool, meta: dict, manifest: dict,
                wanted: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return w, h
    if wanted:
        return wanted if isinstance(wanted, tuple) else (wanted, wanted)
    # The manifest says [width, height] (as `model info` prints it); Ultralytics metadata `imgsz` is [height, width].
    # Reading the manifest's the Ultralytics way once put the bundled FP32 twin on a 384x640 portrait canvas.
    try:
        size = parse_size(manifest.get("input_size")) or parse_imgsz(meta.get("imgsz"))
    except ValueError as exc:
        raise ModelError(f"{path}: {exc}; give the size with detector.input_size") from None
    return size or (DEFAULT_INPUT, DEFAULT_INPUT)


def detections_output(session: Any) -> str:
    """The output holding the detections: the first of rank 3, [1, A, B] (a segmentation export puts its mask
    prototypes, rank 4, first), else the first."""
    outputs = session.get_outputs()
    ranked = [o for o in outputs if isinstance(o.shape, list | tuple) and len(o.shape) == 3]
    return (ranked or outputs)[0].name


def _layout_and_classes(session: Any, path: Path, input_size: tuple[int, int], dtype: Any, channels_last: bool,
                        names: list[str] | None, meta: dict, cfg: DetectorConfig) -> tuple[Layout, list[str]]:
    """Run the zero image once to see the concrete output shape (dynamic exports hide it in the graph)."""
    w, h = input_size
    blob = np.zeros(blob_shape(w, h, channels_last), dtype)
    output = detections_output(session)
    try:
        out = session.run([output], {session.get_inputs()[0].name: blob})[0]
    except Exception as exc:
        raise ModelError(f"{path}: inference failed on a {w}x{h} input: {exc}") from None
    shape = tuple(int(d) for d in np.shape(out))
    end2end = str(meta.get("end2end", "")).lower() == "true"
    try:
        if cfg.layout != "auto":
            layout = Layout(cfg.layout)
        else:
            layout = detect_layout(shape, len(names) if names else None, input_size, end2end)
    except LayoutError as exc:
        outputs = session.get_outputs()
        which = f" (output '{output}', the first of {len(outputs)} with rank 3 or the first of all)" \
            if len(outputs) > 1 else ""
        raise ModelError(f"{path}: {exc}{which}") from None
    if names:
        return layout, names
    unread = f"its 'names' metadata {meta['names']!r} is not a list or an {{id: name}} map" if meta.get("names") \
        else "no 'names' in its ONNX metadata"
    if layout is Layout.END2END:
        # The class id is a number in each row, so nothing says how many classes there are; guessing from a
        # test image named 1 class of a 2-class model and dropped every crack box.
        raise ModelError(f"{path}: an end-to-end model (NMS inside) gives class ids as numbers and this one names "
                         f"no classes ({unread}, no manifest 'classes'), so how many it has is unknown; name them: "
                         "--names pothole,crack on the command line or detector.class_names in the config")
    nc = shape[1] - 4 if layout is Layout.YOLOV8 else shape[2] - 5
    log.warning("%s names no classes (%s, no manifest 'classes'): its %d classes are reported as %s; name them "
                "with --names on the command line or detector.class_names in the config", path, unread, nc,
                ", ".join(str(i) for i in range(min(nc, 3))) + (", ..." if nc > 3 else ""))
    return layout, [str(i) for i in range(nc)]


def _probe_images(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    return test_pattern(width, height), sample_road_image(width, height)


def _box_units(outputs: list[np.ndarray], layout: Layout, path: Path, configured: str) -> str:
    """Pixels or fractions of the input, as configured or as the probe outputs' box coordinates show."""
    if configured != "auto":
        return configured
    extent = box_extent(outputs, layout)
    if 0 < extent <= FRACTION_EXTENT:
        log.info("%s gives its boxes as fractions of the input (99%% of coordinates within %.2f); scaling them to "
                 "pixels", path, extent)
        return "fractions"
    return "pixels"  # includes "no box to judge by": YOLO exports, the common case


def _load_check(outputs: list[np.ndarray], layout: Layout, path: Path, enabled: bool) -> None:
    """With the check enabled, all-zero or non-finite scores on the probe images refuse the model."""
    scores = [_max_score(out, layout) for out in outputs if candidates(out, layout).scores.size]
    if not enabled:
        return
    if not scores:  # an end-to-end head (NMS inside) may keep no row at all: nothing to judge its scores by
        log.warning("%s returned no box at all on a test pattern and a sample road image, so its scores could not "
                    "be checked; `edge-agent model eval` on your images shows whether it works", path)
        return
    if not all(np.isfinite(s) for s in scores):
        raise ModelError(f"{path}: the model outputs NaN/inf scores on a test pattern and a sample image")
    if max(scores) <= 1e-6:
        raise ModelError(f"{path}: degenerate outputs: every class score is 0 on a test pattern and a sample road "
                         "image (a broken INT8 export looks like this); refusing it")


def _max_score(output: np.ndarray, layout: Layout) -> float:
    """The highest score of one output; 0 when it holds no box at all (an end-to-end head with NMS inside
    returns 0 rows on an image with nothing above its own threshold: that is "nothing", not NaN scores)."""
    scores = candidates(output, layout).scores
    if not scores.size:
        return 0.0
    return float(np.max(scores)) if np.isfinite(scores).all() else float("nan")


def test_pattern(width: int, height: int) -> np.ndarray:
    """Colour bars, a gradient and a checkerboard: wakes every kind of filter in a conv net."""
    img = np.zeros((height, width, 3), np.uint8)
    bars = np.array([[255, 255, 255], [0, 255, 255], [255, 255, 0], [0, 255, 0], [255, 0, 255], [0, 0, 255],
                     [255, 0, 0], [0, 0, 0]], np.uint8)
    img[: height // 2] = bars[(np.arange(width) * len(bars) // width)][None]
    img[height // 2:, : width // 2] = np.linspace(0, 255, width // 2, dtype=np.uint8)[None, :, None]
    yy, xx = np.mgrid[height // 2:height, width // 2:width]
    img[height // 2:, width // 2:] = (((yy // 16 + xx // 16) % 2) * 255).astype(np.uint8)[..., None]
    return img


def sample_road_image(width: int, height: int, seed: int = 7) -> np.ndarray:
    """A grey asphalt texture with a dark irregular hole in it, drawn procedurally (no files needed)."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(118, 14, (height, width, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
    img[: height // 3] = (200, 170, 150)  # sky
    cx, cy = width // 2, int(height * 0.7)
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    rad = rng.uniform(0.7, 1.0, 24)
    pts = np.stack([cx + np.cos(ang) * rad * width * 0.12, cy + np.sin(ang) * rad * height * 0.07], 1)
    cv2.fillPoly(img, [pts.astype(np.int32)], (45, 45, 50))
    return cv2.GaussianBlur(img, (3, 3), 0)
