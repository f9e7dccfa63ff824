"""After training: export ONNX, quantize (keeping only what is faster), evaluate, write manifest and card.

Everything lands in models/bundled/: model.onnx (what "bundled" loads), model-fp32.onnx (its FP32 twin for
`edge-agent model bench`), a `.manifest.json` beside each, MODEL_CARD.md and pr_curve.png. Intermediate
files (the validation/calibration folders, which only link to ../shared photos) stay in models/cache/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config.detector import DetectorConfig
from edge_agent.detector import load_detector, sample_road_image
from edge_agent.evaluate import evaluate_dataset, plot_pr
from edge_agent.quantize import quantize_model
from roadmon_contract.digest import sha256_file

log = logging.getLogger("pipeline")

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "bundled"
CACHE = HERE / "cache"
DEFAULT_THRESHOLD = DetectorConfig().score_threshold
SYNTH_EVAL_SCENES = 60
TIMING_RUNS = 40


def link_split(data: Path, names: list[str], dest: Path) -> Path:
    """A YOLO-layout folder of symlinks to some of the photos (nothing is copied)."""
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    for name in names:
        img = (data / "images" / name).resolve()
        (dest / "images" / name).symlink_to(img)
        label = (data / "labels" / f"{Path(name).stem}.txt").resolve()
        if label.exists():
            (dest / "labels" / f"{Path(name).stem}.txt").symlink_to(label)
    return dest


def render_scenes(dest: Path, count: int, seed: int, size: tuple[int, int] = (640, 360)) -> Path | None:
    """Rendered road scenes with their pothole labels (YOLO layout), if the simulator's renderer exists."""
    try:
        from edge_agent.sim.render import random_training_scene
    except ImportError:
        return None
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(count):
        img, boxes, names = random_training_scene(rng, w, h)
        cv2.imwrite(str(dest / "images" / f"scene_{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        lines = []
        for (x1, y1, x2, y2), name in zip(np.asarray(boxes).reshape(-1, 4), names, strict=True):
            if name == "pothole":
                lines.append(f"0 {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} "
                             f"{(y2 - y1) / h:.6f}")
        (dest / "labels" / f"scene_{i:04d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return dest


def latency_table(model: Path, fp32: Path, sizes: tuple[int, ...] = (320,), threads: tuple[int, ...] = (1, 2),
                  runs: int = 40) -> list[dict]:
    frame = sample_road_image(1280, 720)
    rows = []
    for t in threads:
        dets = {"int8": load_detector(DetectorConfig(model=str(model), threads=t)),
                "fp32": load_detector(DetectorConfig(model=str(fp32), threads=t, input_size=sizes[0]))}
        times: dict[str, list[float]] = {k: [] for k in dets}
        for _ in range(runs):
            for k, d in dets.items():
                t0 = time.monotonic()
                d.infer(frame)
                times[k].append(1000 * (time.monotonic() - t0))
        rows.append({"threads": t, "input": sizes[0], **{f"{k}_median_ms": round(float(np.median(v)), 2)
                                                          for k, v in times.items()}})
    return rows


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_bundle(run_dir: Path, args: argparse.Namespace) -> None:
    from export import export_onnx

    BUNDLE.mkdir(exist_ok=True)
    CACHE.mkdir(exist_ok=True)
    for stale in BUNDLE.glob("*.manifest.json"):  # rewritten below; a stale one would fail the sha256 check
        stale.unlink()
    state = json.loads((run_dir / "done.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    version = dt.datetime.now(dt.UTC).strftime("%Y.%m.%d")
    fp32 = BUNDLE / "model-fp32.onnx"
    log.info("exporting %s", run_dir / "best.pt")
    (BUNDLE / "split.json").write_text(json.dumps({"seed": args.seed, "val": split["val"]}, indent=1) + "\n")
    val_dir = link_split(args.data, split["val"], CACHE / "val")
    rng = np.random.default_rng(1)
    calib_names = [split["train"][i] for i in sorted(rng.permutation(len(split["train"]))[:64])]
    calib_dir = link_split(args.data, calib_names, CACHE / "calib")
    synth_dir = render_scenes(CACHE / "synthetic_val", SYNTH_EVAL_SCENES, seed=12345)

    # Calibrate: shift the class logit so the default threshold sits at the best-F1 point on held-out photos.
    raw = export_onnx(run_dir / "best.pt", CACHE / "raw-fp32.onnx", version=version)
    raw_val = evaluate_dataset(load_detector(DetectorConfig(model=str(raw), manifest=None)), val_dir,
                               DEFAULT_THRESHOLD)
    best_thr = float(np.clip(raw_val["per_class"]["pothole"]["best_f1_threshold"], 0.05, 0.95))
    shift = logit(DEFAULT_THRESHOLD) - logit(best_thr)
    log.info("best-F1 threshold of the raw scores on held-out photos: %.3f -> logit shift %+.3f", best_thr, shift)
    export_onnx(run_dir / "best.pt", fp32, version=version, logit_shift=shift)

    log.info("quantizing (calibration: %d training photos; accuracy: %d validation photos)", len(calib_names),
             len(split["val"]))
    report = quantize_model(fp32, BUNDLE / "model.onnx", calib_dir, eval_dir=val_dir, threads=args.threads or 0,
                            runs=TIMING_RUNS)
    log.info("%s", report.reason)
    chosen = BUNDLE / "model.onnx"

    results = {}
    for label, path in (("chosen", chosen), ("fp32", fp32)):
        det = load_detector(DetectorConfig(model=str(path), input_size=args.size, manifest=None))
        results[label] = {"val": evaluate_dataset(det, val_dir, DEFAULT_THRESHOLD)}
        if synth_dir:
            results[label]["synthetic"] = evaluate_dataset(det, synth_dir, DEFAULT_THRESHOLD)
    val = results["chosen"]["val"]
    plot_pr(val, BUNDLE / "pr_curve.png", f"bundled model, held-out photos at {args.size} px: "
                                          f"AP50 {val['ap50']:.3f}")
    latency = latency_table(chosen, fp32, runs=TIMING_RUNS)

    def strip(res: dict) -> dict:
        return {k: v for k, v in res.items() if k != "curves"}

    common = {
        "name": "roadmon-pothole",
        "version": version,
        "classes": ["pothole"],
        "input_size": [args.size, args.size],
        "input": "RGB float 0..1, NCHW, letterboxed (centred, grey 114)",
        "output_layout": "yolov8 [1, 4+nc, N]: cx, cy, w, h (input pixels), class scores after sigmoid",
        "score_threshold": DEFAULT_THRESHOLD,
        "score_calibration": {"raw_best_f1_threshold": round(best_thr, 4), "logit_shift": round(shift, 4),
                              "note": "class logit shifted so the default threshold is the best-F1 point on the "
                                      "held-out photos; rankings and AP are unchanged"},
        "architecture": "PotholeNet: CSP conv backbone (stride 8/16/32), top-down FPN, anchor-free head, "
                        "task-aligned assignment; written for this project; ~1.0 M parameters",
        "training": {
            "data": "Pothole (Atikur Rahman Chitholian, Roboflow 70/20/10 re-split), training split, 465 photos",
            "data_licence": "ODbL v1.0",
            "validation": f"{len(split['val'])} of those photos held out (seeded hash split, seed {args.seed})",
            "synthetic": "road scenes rendered by edge_agent.sim.render mixed in "
                         f"({int(100 * args.synth_fraction)}% of samples)",
            "steps": state["step"], "minutes": round(state["train_s"] / 60, 1), "batch": args.batch,
            "from_scratch": True, "hardware": f"{platform.machine()} CPU, 2 shared cores",
        },
        "metrics": {"val": strip(results["chosen"]["val"]), "val_fp32": strip(results["fp32"]["val"])},
        "latency": {"platform": f"{cpu_name()} ({platform.machine()}, the build machine, shared)",
                    "rows": latency},
        "quantization": {"format": report.chosen, "reason": report.reason, "trials": report.as_dict()["trials"],
                         "fp32": report.as_dict()["fp32"]},
        "fp32_model": "model-fp32.onnx",
        "licence": "Apache-2.0 (weights); trained on ODbL-licensed data: credit the dataset when redistributing",
    }
    if synth_dir:
        common["metrics"]["synthetic"] = strip(results["chosen"]["synthetic"])
    manifest = common | {"file": "model.onnx", "sha256": sha256_file(chosen)}
    (BUNDLE / "model.manifest.json").write_text(json.dumps(manifest, indent=1, default=float) + "\n")
    fp32_manifest = common | {"file": "model-fp32.onnx", "sha256": sha256_file(fp32),
                              "quantization": {"format": "fp32"}}
    fp32_manifest.pop("fp32_model")
    (BUNDLE / "model-fp32.manifest.json").write_text(json.dumps(fp32_manifest, indent=1, default=float) + "\n")
    from card import write_card

    write_card(BUNDLE / "MODEL_CARD.md", manifest, state)
    log.info("bundle written to %s", BUNDLE)
