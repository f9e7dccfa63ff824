"""FP32 vs INT8 latency of the bundled detector at 320 and 640 px input, with 1 and 2 threads.

The INT8 model shipped is fixed at 320 px; for 640 the FP32 twin (dynamic input) is quantized here in the
same format, calibrated on rendered road scenes (latency does not depend on calibration quality). The models
take turns run by run so background load hits both alike; the figures that matter are the ratios.

    python bench/bench_detector.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.config.detector import DetectorConfig  # noqa: E402
from edge_agent.detect_manifest import bundled_model_path  # noqa: E402
from edge_agent.detector import load_detector, sample_road_image  # noqa: E402
from edge_agent.quantize import FORMATS, prepare, quantize_one  # noqa: E402


def calibration_images(folder: Path, count: int = 16) -> list[Path]:
    rng = np.random.default_rng(0)
    try:
        from edge_agent.sim.render import random_training_scene
    except ImportError:
        random_training_scene = None
    paths = []
    for i in range(count):
        img = random_training_scene(rng, 960, 540)[0] if random_training_scene else sample_road_image(960, 540, i)
        paths.append(folder / f"{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


def int8_at(size: int, fp32: Path, shipped: Path, fmt: str, work: Path) -> Path:
    if size == 320:
        return shipped
    spec = next((f for f in FORMATS if f.name == fmt), FORMATS[0])
    pre, exclude = prepare(fp32, work, (size, size))
    return quantize_one(pre, work / f"int8_{size}.onnx", spec, calibration_images(work), (size, size), exclude)


def time_pair(fp32: Path, int8: Path, size: int, threads: int, runs: int) -> tuple[float, float]:
    dets = [load_detector(DetectorConfig(model=str(p), threads=threads, input_size=size, manifest=None))
            for p in (fp32, int8)]
    frame = sample_road_image(1280, 720)
    times: list[list[float]] = [[], []]
    for d in dets:
        d.infer(frame)
    for _ in range(runs):
        for i, d in enumerate(dets):
            t0 = time.monotonic()
            d.infer(frame)
            times[i].append(1000 * (time.monotonic() - t0))
    return float(np.median(times[0])), float(np.median(times[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    runs = 15 if args.quick else 60
    shipped = bundled_model_path()
    fp32 = shipped.with_name("model-fp32.onnx")
    shipped_det = load_detector(DetectorConfig(model=str(shipped)))
    fmt = shipped_det.info.quantization or FORMATS[0].name
    if fmt == "fp32":
        fmt = FORMATS[0].name
        print("the shipped model is FP32 (INT8 was not faster on the build machine); timing "
              f"{fmt} against it anyway")
    print(f"bundled model: {shipped.name} ({fmt}), FP32 twin: {fp32.name}; {runs} runs each, median ms")
    print(f"{'input':>6} {'threads':>7} {'fp32 ms':>9} {'int8 ms':>9} {'fp32/int8':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in (320, 640):
            int8 = int8_at(size, fp32, shipped, fmt, Path(tmp))
            for threads in (1, 2):
                f, q = time_pair(fp32, int8, size, threads, runs)
                print(f"{size:>6} {threads:>7} {f:>9.1f} {q:>9.1f} {f / q:>9.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
