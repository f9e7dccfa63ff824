"""Static INT8 quantization that keeps only what is really faster here.

Which INT8 format pays depends on the CPU: on x86 with AVX2 but no VNNI, QDQ S8S8 runs slower than FP32
while QOperator U8S8 (with reduce_range against the u8*s8 overflow) runs faster; on ARM only CPUs with
dot-product instructions gain. So `quantize_model` runs `quant_pre_process`, calibrates every candidate format
on real images, measures AP50 and latency of each against FP32, and keeps the fastest format whose AP50 is
within `max_ap_drop` of FP32 (FP32 itself when no INT8 format is both accurate and MIN_SPEEDUP faster).

The decoding tail of a detector (everything from the first Reshape/Transpose/Sigmoid/Softplus/Softmax on)
stays in float: quantizing a Concat that mixes pixel coordinates with 0..1 scores would wipe out the scores.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import Detector, load_detector
from edge_agent.detect.letterbox import blob_shape, letterbox, to_blob
from edge_agent.lab import MIN_SPEEDUP
from edge_agent.lab.evaluate import evaluate_dataset, list_dataset_images, read_image

log = logging.getLogger(__name__)

QUANT_OPS = {"QuantizeLinear", "QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"}
TAIL_START_OPS = {"Reshape", "Transpose", "Sigmoid", "Softplus", "Softmax", "Flatten"}
CONV_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


@dataclass(frozen=True)
class QuantFormatSpec:
    name: str
    quant_format: QuantFormat
    activation_type: QuantType
    weight_type: QuantType
    per_channel: bool
    reduce_range: bool


FORMATS = (
    QuantFormatSpec("qoperator-u8s8-perchannel-reducerange", QuantFormat.QOperator, QuantType.QUInt8,
                    QuantType.QInt8, True, True),
    QuantFormatSpec("qoperator-u8s8-perchannel", QuantFormat.QOperator, QuantType.QUInt8, QuantType.QInt8, True,
                    False),
    QuantFormatSpec("qdq-s8s8-perchannel", QuantFormat.QDQ, QuantType.QInt8, QuantType.QInt8, True, False),
    QuantFormatSpec("qdq-u8s8-perchannel", QuantFormat.QDQ, QuantType.QUInt8, QuantType.QInt8, True, False),
)


@dataclass
class Trial:
    format: str
    ap50: float | None
    latency_ms: float
    speedup: float = 1.0
    accepted: bool = False
    note: str = ""
    size_bytes: int = 0


@dataclass
class QuantReport:
    chosen: str
    reason: str
    fp32: Trial
    trials: list[Trial] = field(default_factory=list)
    accuracy_source: str = ""
    output: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class ImageReader(CalibrationDataReader):
    """Feeds letterboxed real images to the calibrator, exactly as the detector would."""

    def __init__(self, images: list[Path], input_name: str, size: tuple[int, int], channels_last: bool = False) -> None:
        self.images, self.input_name, self.size, self.channels_last = images, input_name, size, channels_last
        self._it: Iterator[Path] = iter(images)

    def get_next(self) -> dict | None:
        for path in self._it:
            img = read_image(path)
            if img is None:
                continue
            canvas, _ = letterbox(img, *self.size)
            return {self.input_name: to_blob(canvas, np.float32, self.channels_last)}
        return None

    def rewind(self) -> None:
        self._it = iter(self.images)


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of nodes downstream of the first decoding op on every path (kept in float).

    A decoding op is one of TAIL_START_OPS with no convolution after it: SiLU (x * Sigmoid(x), every YOLOv5/v8
    export) puts a Sigmoid before nearly every Conv, and an NHWC model a Transpose before the first, so "the
    first Sigmoid or Transpose anywhere" kept almost the whole network in float (1 of 66 Convs quantized)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # ONNX lists nodes in topological order, so walking it backwards meets every consumer before its producer.
    conv_after: dict[str, bool] = {}
    for node in reversed(model.graph.node):
        nxt = [c for out in node.output for c in consumers.get(out, [])]
        conv_after[node.name] = any(c.op_type in CONV_OPS or conv_after.get(c.name, False) for c in nxt)
    tail: set[str] = set()
    stack = [n for n in model.graph.node if n.op_type in TAIL_START_OPS and not conv_after[n.name]]
    while stack:
        node = stack.pop()
        if node.name in tail:
            continue
        tail.add(node.name)
        for out in node.output:
            stack.extend(consumers.get(out, []))
    return sorted(tail)


def ensure_node_names(model: onnx.ModelProto) -> None:
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def measure_latencies(detectors: dict[str, Detector], runs: int = 30) -> dict[str, float]:
    """Median milliseconds of one inference (letterbox + session.run) per model on a fixed road-like frame.

    The models take turns, run by run, so load from other processes on a shared machine falls on all of
    them alike instead of on whichever happened to be measured at a busy moment.
    """
    from edge_agent.detect.detector import sample_road_image

    frame = sample_road_image(1280, 720)
    for det in detectors.values():
        for _ in range(2):
            det.infer(frame)
    times: dict[str, list[float]] = {name: [] for name in detectors}
    for _ in range(runs):
        for name, det in detectors.items():
            t0 = time.monotonic()
            det.infer(frame)
            times[name].append(time.monotonic() - t0)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def quantize_model(src: Path, dst: Path, calib_dir: Path, *, eval_dir: Path | None = None,
                   formats: tuple[QuantFormatSpec, ...] = FORMATS, max_ap_drop: float = 0.01,
                   calib_images: int = 64, threads: int = 0, input_size: int = 0, runs: int = 30,
                   progress: Callable[[str], None] | None = None) -> QuantReport:
    """Try each INT8 format, keep the fastest within max_ap_drop AP50 of FP32; writes dst either way."""
    say = progress or (lambda msg: log.info("%s", msg))
    images = list_dataset_images(calib_dir)
    if not images:
        raise ValueError(f"no calibration images in {calib_dir} (looked in {calib_dir}/images and {calib_dir})")
    rng = np.random.default_rng(0)
    calib = [images[i] for i in sorted(rng.permutation(len(images))[:calib_images])]
    eval_dir = eval_dir or calib_dir
    base_cfg = DetectorConfig(model=str(src), threads=threads, input_size=input_size, manifest=None)
    fp32 = load_detector(base_cfg)
    size = fp32.info.input_size
    channels_last = fp32.info.input_layout == "NHWC"
    if fp32.info.input_dtype != "float32":  # calibration feeds float32 images; each format would fail alike
        raise ValueError(f"{src}: quantize takes a model with a float32 input, this one takes "
                         f"{fp32.info.input_dtype}: quantize its FP32 export")

    def accuracy(det: Detector) -> float:  # a Trial's ap50 is None only for a format that failed to build
        res = evaluate_dataset(det, eval_dir, pseudo_labels_from=None if has_labels else fp32)
        return float(res["ap50"])

    has_labels = (eval_dir / "labels").is_dir()
    accuracy_source = f"AP50 on {eval_dir}" if has_labels else f"AP50 against FP32 detections on {eval_dir}"

    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        try:
            pre, exclude = prepare(src, Path(tmp), size, channels_last)
        except Exception as exc:  # onnx's checker and shape tools raise their own types (an unsorted graph)
            raise ValueError(f"{src}: cannot prepare it for quantization: {str(exc).splitlines()[0][:300]}") from exc
        # FP32 is timed in the same fixed-shape, pre-processed form, so the comparison is like for like.
        fp32 = load_detector(base_cfg.model_copy(update={"model": str(pre)}))
        say(f"FP32: measuring accuracy ({accuracy_source}) and latency")
        fp32_ap50 = accuracy(fp32)
        fp32_trial = Trial("fp32", fp32_ap50, float("nan"), size_bytes=src.stat().st_size)
        say(f"FP32: AP50 {fp32_ap50:.3f}")
        detectors = {"fp32": fp32}
        for spec in formats:
            out = Path(tmp) / f"{spec.name}.onnx"
            say(f"{spec.name}: calibrating on {len(calib)} images")
            try:
                quantize_one(pre, out, spec, calib, size, exclude, channels_last)
                det = load_detector(base_cfg.model_copy(update={"model": str(out), "sanity_check": True}))
            except Exception as exc:
                trials.append(Trial(spec.name, None, float("nan"), note=f"failed: {exc}"[:300]))
                say(f"{spec.name}: failed ({exc})")
                continue
            ap50 = accuracy(det)
            trial = Trial(spec.name, ap50, float("nan"), size_bytes=out.stat().st_size)
            trial.accepted = ap50 >= fp32_ap50 - max_ap_drop
            trial.note = "within tolerance" if trial.accepted else f"AP50 drop {fp32_ap50 - ap50:.3f}"
            trials.append(trial)
            detectors[spec.name] = det
            say(f"{spec.name}: AP50 {ap50:.3f}")
        say(f"timing {len(detectors)} models, {runs} runs each, taking turns")
        latency = measure_latencies(detectors, runs)
        fp32_trial.latency_ms = latency["fp32"]
        for trial in trials:
            if trial.format in latency:
                trial.latency_ms = latency[trial.format]
                trial.speedup = fp32_trial.latency_ms / trial.latency_ms
                say(f"{trial.format}: {trial.latency_ms:.1f} ms ({trial.speedup:.2f}x FP32)")
        chosen, reason = choose(fp32_trial, trials, max_ap_drop)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src if chosen == "fp32" else Path(tmp) / f"{chosen}.onnx", dst)
    say(reason)
    return QuantReport(chosen, reason, fp32_trial, trials, accuracy_source, str(dst))


def prepare(src: Path, workdir: Path, size: tuple[int, int], channels_last: bool = False) -> tuple[Path, list[str]]:
    """Fixed input shape + quant_pre_process; returns the prepared model and the float-only tail nodes."""
    pre = workdir / "pre.onnx"
    fixed = fix_input_shape(src, workdir / "fixed.onnx", size, channels_last)
    try:
        quant_pre_process(str(fixed), str(pre), skip_symbolic_shape=False)
    except Exception as exc:  # pre-processing is an optimisation; quantization works without it
        log.warning("quant_pre_process failed (%s); quantizing the model as it is", exc)
        shutil.copy(fixed, pre)
    model = onnx.load(str(pre))
    ensure_node_names(model)
    onnx.save(model, str(pre))
    return pre, tail_nodes(model)


def quantize_one(pre: Path, out: Path, spec: QuantFormatSpec, calib: list[Path], size: tuple[int, int],
                 exclude: list[str], channels_last: bool = False) -> Path:
    input_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
    reader = ImageReader(calib, input_name, size, channels_last)
    quantize_static(str(pre), str(out), reader, quant_format=spec.quant_format,
                    activation_type=spec.activation_type, weight_type=spec.weight_type,
                    per_channel=spec.per_channel, reduce_range=spec.reduce_range, nodes_to_exclude=exclude,
                    calibrate_method=CalibrationMethod.MinMax)
    if not any(n.op_type in QUANT_OPS for n in onnx.load(str(out), load_external_data=False).graph.node):
        raise RuntimeError("the result holds no INT8 operator: nothing was quantized")
    return out


def fix_input_shape(src: Path, dst: Path, size: tuple[int, int], channels_last: bool = False) -> Path:
    """A copy with a static [1, 3, H, W] (or [1, H, W, 3]) input: shape inference, pre-processing and the
    QOperator quantizer need concrete shapes, and constant folding then removes the grid computation."""
    model = onnx.load(str(src))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        shutil.copy(src, dst)
        return dst
    w, h = size
    make_input_shape_fixed(model.graph, inp.name, list(blob_shape(w, h, channels_last)))
    fix_output_shapes(model)
    onnx.save(model, str(dst))
    return dst


def choose(fp32: Trial, trials: list[Trial], max_ap_drop: float) -> tuple[str, str]:
    good = [t for t in trials if t.accepted and fp32.latency_ms >= MIN_SPEEDUP * t.latency_ms]
    if not good:
        slower = [t.format for t in trials if t.accepted]
        why = (f"accurate INT8 formats ({', '.join(slower)}) were not {MIN_SPEEDUP:g}x faster than FP32 here"
               if slower
               else f"no INT8 format stayed within {100 * max_ap_drop:.0f} AP50 point(s) of FP32")
        return "fp32", f"kept FP32 ({fp32.latency_ms:.1f} ms): {why}"
    best = min(good, key=lambda t: t.latency_ms)
    return best.format, (f"chose {best.format}: {best.latency_ms:.1f} ms vs FP32 {fp32.latency_ms:.1f} ms "
                         f"({best.speedup:.2f}x), AP50 {best.ap50:.3f} vs FP32 {fp32.ap50:.3f} "
                         f"(within {100 * max_ap_drop:.0f} point); fastest of {len(good)} accurate and faster "
                         f"format(s)")
