"""Judge the checkpoints of a sweep (models/sweep.sh) on the held-out data: AP50 per domain and class against
latency on one thread, as models/bundled/sweep.json (the model card's size/architecture/data table).

    python models/sweep_eval.py DIR_OF_CHECKPOINTS [--out models/bundled/sweep.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from export import export_onnx  # noqa: E402
from pipeline import CACHE, eval_sets  # noqa: E402
from train import DEFAULT_DATA, DEFAULT_SURVEY  # noqa: E402

from edge_agent.config.detector import DetectorConfig  # noqa: E402
from edge_agent.detector import load_detector, sample_road_image  # noqa: E402
from edge_agent.evaluate import evaluate_dataset  # noqa: E402

TIMING_RUNS = 30


def one_thread_ms(model: Path) -> float:
    det = load_detector(DetectorConfig(model=str(model), manifest=None, threads=1))
    frame = sample_road_image(1280, 720)
    times = []
    for _ in range(TIMING_RUNS):
        t0 = time.monotonic()
        det.infer(frame)
        times.append(1000 * (time.monotonic() - t0))
    return round(float(np.median(times)), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "bundled" / "sweep.json")
    ap.add_argument("--split", type=Path, default=HERE / "bundled" / "split.json")
    args = ap.parse_args()
    split = json.loads(args.split.read_text())
    sets = eval_sets(argparse.Namespace(survey=DEFAULT_SURVEY, data=DEFAULT_DATA),
                     {"handheld_val": split["val"], "survey_val": split.get("survey_val", [])})
    rows = json.loads(args.out.read_text()) if args.out.exists() else {}
    for ckpt in sorted(args.checkpoints.glob("*.pt")):
        onnx = export_onnx(ckpt, CACHE / "sweep" / f"{ckpt.stem}.onnx")
        det = load_detector(DetectorConfig(model=str(onnx), manifest=None, threads=1))
        row = {"input": "x".join(map(str, det.info.input_size)), "fp32_ms_1_thread": one_thread_ms(onnx)}
        for name in ("vehicle", "handheld", "synthetic"):
            if name in sets:
                res = evaluate_dataset(det, sets[name])
                row[name] = {c: round(m["ap50"], 3) for c, m in res["per_class"].items() if m["n_gt"]}
        rows[ckpt.stem] = row
        print(ckpt.stem, json.dumps(row), flush=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
