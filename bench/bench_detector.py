"""FP32 vs INT8 latency of the bundled detector at its input size, with 1 and 2 threads.

The shipped model and its FP32 twin take turns run by run on a 1280x720 frame, so background load hits both
alike; the figure that matters is the ratio. (Accuracy and latency at other input sizes: the sweep table in
models/bundled/MODEL_CARD.md.)

    python -m bench.bench_detector [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import load_detector, sample_road_image
from edge_agent.detect.manifest import bundled_model_path

ROOT = Path(__file__).resolve().parent.parent


def time_pair(fp32: Path, int8: Path, threads: int, runs: int) -> tuple[float, float]:
    dets = [load_detector(DetectorConfig(model=str(p), threads=threads)) for p in (fp32, int8)]
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
    fmt = shipped_det.info.quantization or "fp32"
    w, h = shipped_det.info.input_size
    print(f"bundled model: {shipped.name} ({fmt}), FP32 twin: {fp32.name}; input {w}x{h}; {runs} runs each, "
          "median ms")
    print(f"{'threads':>7} {'fp32 ms':>9} {'int8 ms':>9} {'fp32/int8':>10}")
    for threads in (1, 2):
        f, q = time_pair(fp32, shipped, threads, runs)
        print(f"{threads:>7} {f:>9.1f} {q:>9.1f} {f / q:>9.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
