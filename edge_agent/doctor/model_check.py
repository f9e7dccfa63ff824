"""Does the model load and pass its sanity check, how long does one frame take, and on which provider?"""

from __future__ import annotations

import statistics
import time

import cv2
import numpy as np

from calibration.config import intrinsics_from_config
from edge_agent.config import AgentConfig
from edge_agent.config.camera import source_kind
from edge_agent.detect.model_update import effective_model
from edge_agent.doctor.result import CheckResult, Context, Level

SLOW_MS = 1000.0  # slower than this per frame: under one look per second at each defect


def frame_size(cfg: AgentConfig) -> tuple[int, int]:
    """(width, height) of the frames the agent will run on, from the config alone, so that a full doctor and
    `--only model` time the same size: camera.width/height when set, else a video file's own size, else the
    size the camera was calibrated at."""
    if cfg.camera.width and cfg.camera.height:
        return cfg.camera.width, cfg.camera.height
    if source_kind(cfg.camera.source) == "file":
        cap = cv2.VideoCapture(cfg.camera.source)
        try:
            size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        finally:
            cap.release()
        if size[0] > 0 and size[1] > 0:
            return size
    try:
        intr = intrinsics_from_config(cfg.calibration)
    except (OSError, ValueError):  # the calibration check reports a bad intrinsics file
        return cfg.calibration.width, cfg.calibration.height
    return intr.width, intr.height


def check_model(ctx: Context) -> CheckResult:
    from edge_agent.detect.detector import ModelError, load_detector

    assert ctx.cfg is not None
    cfg = ctx.cfg
    model = effective_model(cfg.detector, cfg.model_update, cfg.device.state_dir)
    try:
        t0 = time.monotonic()
        detector = load_detector(cfg.detector.model_copy(update={"model": model}))
        load_s = time.monotonic() - t0
    except ModelError as exc:
        return CheckResult("model", Level.RED, f"model {model!r} does not load: {exc}",
                           "without a model the agent records nothing",
                           "reinstall the model (systemd/install.sh --model FILE) or roll back: point "
                           "current.onnx at previous.onnx in the models folder", {"model": model})
    width, height = frame_size(cfg)
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    detector.detect(frame)  # warm-up: first runs allocate and, on GPUs, build kernels
    times = []
    for _ in range(ctx.options.model_runs):
        t0 = time.monotonic()
        detector.detect(frame)
        times.append((time.monotonic() - t0) * 1000)
    info = detector.info
    median = statistics.median(times)
    data = {"model": model, "name": info.name, "version": info.version, "sha256": info.sha256,
            "provider": info.provider, "load_s": round(load_s, 3), "latency_ms_median": round(median, 1),
            "latency_ms_max": round(max(times), 1), "frame": [width, height], "input_size": info.input_size}
    summary = (f"{info.name} {info.version} ({info.sha256[:12]}) on {info.provider}: {median:.0f} ms per "
               f"{width}x{height} frame (median of {len(times)}), loaded in {load_s:.1f} s")
    if median > SLOW_MS:
        return CheckResult("model", Level.YELLOW, summary,
                           "slower than one frame a second: each defect is seen only once or twice",
                           "use the INT8 model, a smaller input size, or a GPU execution provider", data)
    return CheckResult("model", Level.GREEN, summary, data=data)
