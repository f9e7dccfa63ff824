"""Judge the checkpoints of a sweep (models/sweep.sh) on the held-out data: AP50 per domain and class against
latency on one thread, as models/bundled/sweep.json (the model card's size/architecture/data table).

    python -m models.sweep_eval DIR_OF_CHECKPOINTS [--out models/bundled/sweep.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edge_agent.config.detector import DetectorConfig
from edge_agent.detect.detector import load_detector, sample_road_image
from edge_agent.lab.evaluate import evaluate_dataset
from models.data import DEFAULT_DATA, DEFAULT_SURVEY
from models.export import export_onnx
from models.pipeline import CACHE, eval_sets

HERE = Path(__file__).resolve().parent

TIMING_RUNS = 30


def one_thread_ms(models: dict[str, Path]) -> dict[str, float]:
    """Median ms of letterbox + inference on one thread, the models taking turns run by run (so background
    load on a shared machine hits all of them alike)."""
    dets = {name: load_detector(DetectorConfig(model=str(p), manifest=None, threads=1)) for name, p in models.items()}
    frame = sample_road_image(1280, 720)
    times: dict[str, list[float]] = {name: [] for name in dets}
    for _ in range(TIMING_RUNS):
        for name, det in dets.items():
            t0 = time.monotonic()
            det.infer(frame)
            times[name].append(1000 * (time.monotonic() - t0))
    return {name: round(float(np.median(v)), 1) for name, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "bundled" / "sweep.json")
    ap.add_argument("--split", type=Path, default=HERE / "bundled" / "split.json")
    ap.add_argument("--timing-only", action="store_true", help="keep the AP figures in --out, re-time the models")
    args = ap.parse_args()
    split = json.loads(args.split.read_text())
    sets = eval_sets(argparse.Namespace(survey=DEFAULT_SURVEY, data=DEFAULT_DATA),
                     {"handheld_val": split["val"], "survey_val": split.get("survey_val", [])})
    rows = json.loads(args.out.read_text()) if args.out.exists() else {}
    models = {}
    for ckpt in sorted(args.checkpoints.glob("*.pt")):
        onnx = models[ckpt.stem] = CACHE / "sweep" / f"{ckpt.stem}.onnx"
        if args.timing_only and ckpt.stem in rows and onnx.exists():
            continue
        export_onnx(ckpt, onnx)
        det = load_detector(DetectorConfig(model=str(onnx), manifest=None, threads=1))
        row = {"input": "x".join(map(str, det.info.input_size))}
        for name in ("vehicle", "handheld", "synthetic"):
            if name in sets:
                res = evaluate_dataset(det, sets[name])
                row[name] = {c: round(m["ap50"], 3) for c, m in res["per_class"].items() if m["n_gt"]}
        rows[ckpt.stem] = row
        print(ckpt.stem, json.dumps(row), flush=True)
    for name, ms in one_thread_ms(models).items():
        rows[name]["fp32_ms_1_thread"] = ms
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps({name: row["fp32_ms_1_thread"] for name, row in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
