"""Perception pipeline benchmark: accuracy on a simulated drive, pipeline overhead, memory.

1. `edge-agent sim drive` with 3 m GNSS noise at 1 Hz (3 minutes; --quick: 1 minute), once per GNSS noise
   model: `white` (an independent Gaussian error each epoch, the synthetic receiver the issue's targets are
   defined on) and `drift` (a real receiver's error, 75 % of it wandering with a 45 s time constant).
2. `edge-agent replay --json` on each, in a fresh wrapper process so that the peak RSS of the replay alone is
   measured (target <= 300 MB).
3. Events matched to the true potholes within 5 m. White: the issue's targets, precision >= 0.9, recall >= 0.85,
   median error <= 2.0 m. Drift: the same figures are printed as the realistic one-pass result, not as
   targets: one pass cannot average out an error that is nearly constant over the seconds a defect is in view;
   the fleet server's aggregation of several passes (of different times and vehicles) is what reduces it.
   Both: the camera side alone (each event moved back by its vehicle's GNSS error, see edge_agent.drive_eval)
   must meet precision >= 0.9, recall >= 0.85, median <= 1.0 m; the GNSS error at the events is printed too.
4. Bare detector FPS on the same frames (decoded, only `detect` timed; once before and once after the replay,
   the faster of the two, since the machine is shared) against the replay's end-to-end FPS: target ratio >= 0.85 (the
   pipeline around the model costs at most 15 %); the drives of both models have the same video, so the
   fastest replay counts. Also printed: the same ratio within the replay run
   (time in `detect` / wall time), which is immune to load changes between runs.

Usage: python bench/bench_pipeline.py [--quick] [--minutes M] [--seed N] [--models white,drift] [--keep DIR]
Exit code 1 when a target is missed, 2 when the bench cannot run (no bundled model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EDGE_AGENT = Path(sys.executable).with_name("edge-agent")
BUNDLED = ROOT / "models" / "bundled" / "model.onnx"

# Runs `edge-agent replay` as its only child and reports the child's peak RSS (ru_maxrss is in KiB on Linux).
RSS_WRAPPER = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def bare_detector_fps(drive: Path, max_frames: int | None = None) -> tuple[float, int]:
    """Detector-only FPS over the video's frames: decoding is not timed, only `detect`."""
    import cv2

    from edge_agent import config as agent_config
    from edge_agent.detector import load_detector

    cfg = agent_config.load(drive / "agent.toml")
    detector = load_detector(cfg.detector)
    cap = cv2.VideoCapture(str(drive / "video.mp4"))
    spent, frames = 0.0, 0
    while max_frames is None or frames < max_frames:
        ok, image = cap.read()
        if not ok:
            break
        t0 = time.perf_counter()
        detector.detect(image)
        spent += time.perf_counter() - t0
        frames += 1
    cap.release()
    return frames / max(spent, 1e-9), frames


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def replay_drive(drive: Path, args: argparse.Namespace, minutes: float, defects: int, model: str) -> dict | None:
    """Render the drive with noise MODEL into DRIVE, replay it; the replay's summary, peak RSS and accuracy."""
    from edge_agent.drive_eval import TruthTrack, score, true_defects, without_gnss_error
    from edge_agent.outbox import Outbox

    drive.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    sim = run([str(EDGE_AGENT), "sim", "drive", "--out", str(drive), "--seed", str(args.seed), "--minutes",
               str(minutes), "--gps-noise-m", "3", "--gps-noise-model", model, "--nmea-hz", "1", "--defects",
               str(defects), "--fps", "15"], timeout=3600)
    if sim.returncode != 0:
        print(sim.stderr[-3000:])
        return None
    print(f"sim drive ({model}): {minutes:g} min, {defects} defects, seed {args.seed}, "
          f"{time.monotonic() - t0:.0f} s")
    outbox = drive / "outbox.db"
    outbox.unlink(missing_ok=True)
    replay = run([sys.executable, "-c", RSS_WRAPPER, str(EDGE_AGENT), "replay", "--video",
                  str(drive / "video.mp4"), "--nmea", str(drive / "drive.nmea"), "--config",
                  str(drive / "agent.toml"), "--outbox", str(outbox), "--json"], timeout=3600)
    if replay.returncode != 0:
        print(replay.stderr[-3000:])
        return None
    summary = json.loads(replay.stdout.strip().splitlines()[-1])
    peak_mb = int(replay.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024
    with Outbox(outbox) as box:
        events = [event for _, event in box.iter_events()]
    truth, potholes = TruthTrack(drive / "truth.csv"), true_defects(drive / "defects.geojson")
    return {"summary": summary, "peak_mb": peak_mb, "result": score(events, potholes, radius_m=5.0, truth=truth),
            "camera": score(without_gnss_error(events, truth), potholes, radius_m=5.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1-minute drive instead of 3")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--defects", type=int, default=None, help="defects on the drive (default 12 per minute)")
    parser.add_argument("--models", default="white,drift", help="GNSS noise models to run, comma-separated")
    parser.add_argument("--keep", type=Path, default=None, help="write the drives and outboxes here and keep them")
    args = parser.parse_args()
    if not BUNDLED.exists():
        print(f"bench_pipeline: no bundled model at {BUNDLED.relative_to(ROOT)}; nothing to measure")
        return 2
    minutes = args.minutes or (1.0 if args.quick else 3.0)
    defects = args.defects or max(4, round(12 * minutes))
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    figures: dict = {}
    targets: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        first: Path | None = None
        for model in models:
            drive = root / model
            got = replay_drive(drive, args, minutes, defects, model)
            if got is None:
                return 2
            first = first or drive
            result, camera, summary = got["result"], got["camera"], got["summary"]
            figures[model] = {
                "precision": round(result.precision, 3), "recall": round(result.recall, 3),
                "median_error_m": _round(result.median_error_m), "p90_error_m": _round(result.p90_error_m),
                "events": result.events, "potholes": result.defects, "matched": result.matched,
                "gnss_error_at_events_median_m": _round(result.gnss_median_m),
                "camera_side_precision": round(camera.precision, 3), "camera_side_recall": round(camera.recall, 3),
                "camera_side_median_error_m": _round(camera.median_error_m),
                "frames": summary["frames"], "dropped": summary["dropped"], "tracks": summary["tracks"],
                "replay_fps": summary["fps"], "peak_rss_mb": round(got["peak_mb"], 1),
                "fps_ratio_in_run": _round(summary["detect_s"] / summary["wall_s"], 3)
                if summary.get("detect_s") else None,
            }
            literal = result.precision >= 0.9 and result.recall >= 0.85 \
                and result.median_error_m is not None and result.median_error_m <= 2.0
            if model == "white":
                targets["white: precision >= 0.9"] = result.precision >= 0.9
                targets["white: recall >= 0.85"] = result.recall >= 0.85
                targets["white: median error <= 2.0 m"] = \
                    result.median_error_m is not None and result.median_error_m <= 2.0
            else:
                print(f"  {model}: the issue's figures {'met' if literal else 'not met'} in one pass "
                      f"(median {_round(result.median_error_m)} m, GNSS alone {_round(result.gnss_median_m)} m at "
                      "the events); correlated GNSS error is reduced by the fleet server's multi-pass aggregation")
            targets[f"{model}: camera side precision >= 0.9, recall >= 0.85, median <= 1.0 m"] = \
                camera.precision >= 0.9 and camera.recall >= 0.85 \
                and camera.median_error_m is not None and camera.median_error_m <= 1.0
            targets[f"{model}: peak RSS of edge-agent replay <= 300 MB"] = got["peak_mb"] <= 300
        # The machine is shared: bare runs before and after bracket the conditions; the faster of the two is
        # the bare figure (load only ever slows a run down, so this is the conservative ratio).
        before, bare_frames = bare_detector_fps(first)
        after, _ = bare_detector_fps(first)
    bare_fps = max(before, after)
    # Every model's drive has the same video (only drive.nmea differs), so the replays are runs on the same
    # frames too; likewise the fastest is the least disturbed one.
    replay_fps = max(figures[m]["replay_fps"] for m in models)
    ratio = replay_fps / bare_fps
    figures["speed"] = {"replay_fps": replay_fps, "bare_detector_fps": round(bare_fps, 2), "bare_frames": bare_frames,
                        "bare_fps_before_after": [round(before, 2), round(after, 2)], "fps_ratio": round(ratio, 3)}
    targets["replay fps / bare detector fps >= 0.85"] = ratio >= 0.85
    print(json.dumps(figures))
    for name, ok in targets.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
