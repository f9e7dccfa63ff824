"""Does the model load and pass its sanity check, how long does one frame take, and on which provider?"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from calibration.config import intrinsics_from_config
from edge_agent.config import AgentConfig
from edge_agent.config.camera import source_kind
from edge_agent.detect.model_update import effective_model
from edge_agent.doctor.agent_view import running_agent
from edge_agent.doctor.result import CheckResult, Context, Level
from roadmon_contract.status import QUIET_DRIVE_M

SLOW_MS = 1000.0  # slower than this per frame: under one look per second at each defect
HIGH_CUT = 0.9  # a class cut this high passes almost nothing


def _does_not_load(ctx: Context, model: str, exc: Exception) -> CheckResult:
    """Red, unless the running agent fell back to another model at its start and detects with that: then amber
    with what it runs (doctor said "the agent records nothing" while events kept coming)."""
    assert ctx.cfg is not None
    data: dict = {"model": model}
    previous = Path(model).with_name("previous.onnx")
    undo = ("point current.onnx at previous.onnx in the models folder" if previous.exists() else
            f"remove {model} (the agent then runs {ctx.cfg.detector.model})")
    fix = f"push the model again (`fleet-server model push`), or {undo}"
    agent = running_agent(ctx)
    running = (agent.status.get("model") or {}) if agent is not None else {}
    if isinstance(running, dict) and running.get("fallback"):
        data["running"] = running
        return CheckResult("model", Level.YELLOW, f"model {model!r} does not load ({exc}); the running agent fell "
                           f"back to {running.get('name')} {running.get('version')} "
                           f"({str(running.get('sha256'))[:12]}) and detects with it",
                           f"it falls back at every start, and the server was told: {running['fallback']}", fix, data)
    return CheckResult("model", Level.RED, f"model {model!r} does not load: {exc}",
                       "without a model the agent records nothing", f"reinstall the model (systemd/install.sh "
                       f"--model FILE), {fix}", data)


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
        return _does_not_load(ctx, model, exc)
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
    cuts = dict(zip(info.classes, detector.thresholds, strict=True))
    data.update(classes=list(info.classes), thresholds=cuts, manifest=bool(info.manifest))
    summary = (f"{info.name} {info.version} ({info.sha256[:12]}) on {info.provider}: {median:.0f} ms per "
               f"{width}x{height} frame (median of {len(times)}), loaded in {load_s:.1f} s; "
               + ", ".join(f"{name} at {cut:.2f}" for name, cut in cuts.items()))
    # Timed here, beside the running agent (which has the cores): its own figure is the one that counts (38 ms
    # here against 240-460 ms in an agent held to a fifth of a core).
    agent = running_agent(ctx)
    live = agent.status.get("inference_ms") if agent is not None else None
    if isinstance(live, int | float):
        data["agent_inference_ms"] = live
        summary += f"; the running agent: {live:.0f} ms a frame"
    weak = _weak_settings(cfg, info.classes, cuts, bool(info.manifest))
    if weak:
        return CheckResult("model", Level.YELLOW, summary, weak[0], weak[1], data)
    quiet = _quiet_drive(agent.status if agent is not None else {})
    if quiet is not None:
        data["driven_m_since_event"] = quiet[0]
        return CheckResult("model", Level.YELLOW, f"{summary}; {quiet[1]}",
                           "on roads with any damage a working box finds something every few km; a smeared "
                           "windscreen, a lens out of focus or a model that does not suit these roads finds nothing",
                           f"save a frame and look at it (`ffmpeg -i {cfg.camera.source} -frames:v 1 frame.jpg`; a "
                           "USB camera: agent stopped), clean the windscreen, check the focus; the fleet server "
                           "compares the box with the others (`fleet-server device ls --problem finds_nothing`)", data)
    if median > SLOW_MS:
        return CheckResult("model", Level.YELLOW, summary,
                           "slower than one frame a second: each defect is seen only once or twice",
                           "use the INT8 model, a smaller input size, or a GPU execution provider", data)
    return CheckResult("model", Level.GREEN, summary, data=data)


def _quiet_drive(status: dict) -> tuple[int, str] | None:
    """(metres, words) when the running agent drove QUIET_DRIVE_M or more with the detector looking and made no
    event since its last one (or its start)."""
    counters = status.get("counters") or {}
    driven, events = counters.get("driven_m_since_event"), counters.get("events", 0)
    if not isinstance(driven, int) or driven < QUIET_DRIVE_M:
        return None
    since = "its last finding" if isinstance(events, int) and events > 0 else "it started"
    return driven, f"the running agent drove {driven / 1000:.0f} km since {since} and found nothing"


def _weak_settings(cfg: AgentConfig, classes: tuple[str, ...], cuts: dict[str, float],
                   manifest: bool) -> tuple[str, str] | None:
    """(why, what to do) when the settings make the model find less than it can: a model swapped in without its
    manifest fell from its working thresholds (0.21 / 0.10) to 0.35 for every class and found half as much,
    and a score threshold of 0.95 found nothing; both passed as green."""
    high = [name for name, cut in cuts.items() if cut >= HIGH_CUT]
    if high:
        return (f"{', '.join(high)} cut at {HIGH_CUT:g} or more: few detections pass, the box stays quiet",
                "lower detector.score_threshold or detector.class_thresholds (the model card gives each class's "
                "working threshold)")
    chosen = cfg.detector.class_thresholds or "score_threshold" in cfg.detector.model_fields_set
    if not manifest and len(classes) > 1 and not chosen:  # classes score on their own scales (docs/model.md)
        return (f"no manifest beside the model: no per-class working thresholds, every class is cut at the "
                f"default detector.score_threshold {cfg.detector.score_threshold:g}",
                "copy the model's .manifest.json beside it, or set detector.class_thresholds")
    unknown = [c for c in classes if c not in cfg.events.class_weights and c not in cfg.tracker.line_classes]
    if unknown:
        return (f"classes {', '.join(unknown)} are in neither events.class_weights nor tracker.line_classes: "
                "their severity is a default and a crack among them is measured as a blob",
                "add each class to events.class_weights, and the line-like ones to tracker.line_classes")
    return None
