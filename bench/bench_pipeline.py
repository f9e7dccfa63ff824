"""Perception pipeline benchmark: accuracy on a simulated drive, pipeline overhead, memory.

1. `edge-agent sim drive` with 3 m GNSS noise at 1 Hz (3 minutes; --quick: 1 minute), once per GNSS noise
   model: `white` (an independent Gaussian error each epoch, the synthetic receiver the issue's targets are
   defined on) and `drift` (a real receiver's error, 75 % of it wandering with a 45 s time constant).
2. `edge-agent replay --json` on each, in a fresh wrapper process so that the peak RSS of the replay alone is
   measured (target <= 300 MB).
3. Pothole events matched to the true potholes within 5 m (crack events to the cracks, printed). White: the
   issue's targets, precision >= 0.9, recall >= 0.85, median error <= 2.0 m. Drift: the same figures are printed
   as the realistic one-pass result, not as targets: one pass cannot average out an error that is nearly
   constant over the seconds a defect is in view; the fleet server's aggregation of several passes (of different
   times and vehicles) is what reduces it. Both: the camera side alone (each event moved back by its vehicle's
   GNSS error, see edge_agent.lab.drive_eval) must meet precision >= 0.9, recall >= 0.85, median <= 1.0 m; the
   GNSS error at the events is printed too.
4. Speed, in this process with one detector, over the same clip (the drive's first --speed-frames frames):
   `replay` (the whole pipeline) against `decode+detect` (read the video with OpenCV, `detect` each frame: the
   bare detector on a video) and against `detect` (frames decoded beforehand: the model with its pre- and
   post-processing alone). --speed-repeats interleaved repeats (order alternating), so each repeat's ratio
   compares runs seconds apart; the median ratio is printed. Replay / detect-only is printed as well (the gap is
   mostly video decoding), and so are CPU milliseconds per frame of each (process CPU time over all threads),
   which do not depend on other load. Target, on the CPU ratio (load-free; the wall-clock ratio swings with
   whatever else the shared machine runs): replay / decode+detect >= 0.85 in CPU time per frame (the pipeline
   around the model costs at most 15 %).

Progress: a progress bar on a terminal, otherwise a line as each step (render, replay, speed run) starts.

Usage: python -m bench.bench_pipeline [--quick] [--minutes M] [--seed N] [--models white,drift] [--keep DIR]
       [--speed-frames 300] [--speed-repeats 5]
Exit code 1 when a target is missed, 2 when the bench cannot run (no bundled model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Steps, description

ROOT = Path(__file__).resolve().parent.parent
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


def clip_video(drive: Path, out_dir: Path, frames: int) -> Path:
    """The drive's first FRAMES frames as a video of their own (with drive.json, so frame times are unchanged).

    All three speed runs read this clip, so they see the very same frames, and the in-memory copy the
    detect-only run needs stays small (300 frames of 640x360 are 200 MB).
    """
    import shutil

    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(drive / "drive.json", out_dir / "drive.json")
    cap = cv2.VideoCapture(str(drive / "video.mp4"))
    fps = cap.get(cv2.CAP_PROP_FPS)
    clip = out_dir / "video.mp4"
    writer = None
    for _ in range(frames):
        ok, image = cap.read()
        if not ok:
            break
        if writer is None:
            writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), fps, image.shape[1::-1])
        writer.write(image)
    cap.release()
    if writer is not None:
        writer.release()
    return clip


def decoded_frames(video: Path) -> list:
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


def _timed(work) -> tuple[int, float, float]:
    """(frames, wall s, process CPU s of all threads: ONNX Runtime's pool, the capture thread, ...)."""
    w0, c0 = time.perf_counter(), time.process_time()
    frames = work()
    return frames, time.perf_counter() - w0, time.process_time() - c0


def speed_runs(drive: Path, work_dir: Path, frames: int, repeats: int, steps: Steps | None = None) -> dict:
    """Interleaved repeats of three runs over the same clip, one detector (so one warm ONNX Runtime session):

    - detect: `Detector.detect` on frames decoded beforehand (the model and its pre/post-processing alone);
    - decode+detect: read the video with OpenCV and detect each frame, one thread (the bare detector on a video);
    - replay: `replay_drive`, the whole pipeline (capture thread, GNSS feed, tracker, geolocation, outbox).
    Each repeat gives ratios of runs made seconds apart, so load on the shared machine mostly cancels; the median
    over repeats is the figure. CPU time per frame (whole process) is printed too: it does not depend on load.
    STEPS, when given, is told as each run begins (3 warm-ups, then 3 per repeat).
    """
    from edge_agent import config as agent_config
    from edge_agent.detect.detector import load_detector
    from edge_agent.runtime.assemble import build_agent
    from edge_agent.runtime.replay import replay_drive

    cfg = agent_config.load(drive / "agent.toml")
    detector = load_detector(cfg.detector)
    clip = clip_video(drive, work_dir, frames)
    images = decoded_frames(clip)

    def detect_only() -> int:
        for image in images:
            detector.detect(image)
        return len(images)

    def decode_detect() -> int:
        import cv2

        cap, n = cv2.VideoCapture(str(clip)), 0
        while True:
            ok, image = cap.read()
            if not ok:
                break
            detector.detect(image)
            n += 1
        cap.release()
        return n

    def replay() -> int:
        path = work_dir / "outbox.db"
        path.unlink(missing_ok=True)
        with build_agent(cfg, outbox=path, detector=detector) as agent:
            return replay_drive(agent, clip, drive / "drive.nmea")["frames"]

    runs = {"detect": detect_only, "decode+detect": decode_detect, "replay": replay}
    for name, work in runs.items():
        if steps is not None:
            steps.step(f"speed: warm-up {name}")
        work()  # warm-up: first-call costs (imports, allocator, page cache) stay out of the figures
    got: dict[str, list[tuple[int, float, float]]] = {name: [] for name in runs}
    for i in range(repeats):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))  # alternate, so no run always goes first
        for name in order:
            if steps is not None:  # between the timed runs: the line or the redraw is not timed
                steps.step(f"speed: repeat {i + 1}/{repeats}, {name}")
            got[name].append(_timed(runs[name]))

    def fps(name: str, i: int) -> float:
        n, wall, _ = got[name][i]
        return n / max(wall, 1e-9)

    def cpu_ms(name: str) -> float:
        return statistics.median(cpu / n * 1000 for n, _, cpu in got[name])

    vs_decode = [fps("replay", i) / fps("decode+detect", i) for i in range(repeats)]
    vs_detect = [fps("replay", i) / fps("detect", i) for i in range(repeats)]
    return {
        "frames": got["replay"][0][0], "repeats": repeats,
        "fps": {name: round(statistics.median(fps(name, i) for i in range(repeats)), 1) for name in runs},
        "cpu_ms_per_frame": {name: round(cpu_ms(name), 2) for name in runs},
        "ratio_replay_vs_decode_detect": round(statistics.median(vs_decode), 3),
        "ratio_replay_vs_decode_detect_each": [round(r, 3) for r in vs_decode],
        # load only ever slows a run down: the fastest of each kind is a second, independent estimate
        "ratio_replay_vs_decode_detect_best": round(max(fps("replay", i) for i in range(repeats))
                                                    / max(fps("decode+detect", i) for i in range(repeats)), 3),
        "ratio_replay_vs_detect_only": round(statistics.median(vs_detect), 3),
        "ratio_replay_vs_detect_only_each": [round(r, 3) for r in vs_detect],
        "cpu_ratio_replay_vs_decode_detect": round(cpu_ms("decode+detect") / cpu_ms("replay"), 3),
        "cpu_ratio_replay_vs_detect_only": round(cpu_ms("detect") / cpu_ms("replay"), 3),
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def replay_drive(drive: Path, args: argparse.Namespace, minutes: float, defects: int, model: str,
                 steps: Steps | None = None) -> dict | None:
    """Render the drive with noise MODEL into DRIVE, replay it; the replay's summary, peak RSS and accuracy. STEPS,
    when given, is told when each of the two begins."""
    from edge_agent.lab.drive_eval import TruthTrack, score, score_by_class, true_defects, without_gnss_error
    from edge_agent.link.outbox import Outbox

    drive.mkdir(parents=True, exist_ok=True)
    if steps is not None:
        steps.step(f"{model}: sim drive ({minutes:g} min)")
    t0 = time.monotonic()
    sim = run([str(EDGE_AGENT), "sim", "drive", "--out", str(drive), "--seed", str(args.seed), "--minutes",
               str(minutes), "--gps-noise-m", "3", "--gps-noise-model", model, "--nmea-hz", "1", "--defects",
               str(defects), "--fps", "15"], timeout=3600)
    if sim.returncode != 0:
        print(sim.stderr[-3000:])
        return None
    print(f"sim drive ({model}): {minutes:g} min, {defects} defects, seed {args.seed}, "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    outbox = drive / "outbox.db"
    outbox.unlink(missing_ok=True)
    if steps is not None:
        steps.step(f"{model}: edge-agent replay")
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
    by_class = score_by_class(events, drive / "defects.geojson", radius_m=5.0, truth=truth)
    found = [e for e in events if e["class"] == "pothole"]
    return {"summary": summary, "peak_mb": peak_mb, "result": by_class["pothole"], "cracks": by_class["crack"],
            "camera": score(without_gnss_error(found, truth), potholes, radius_m=5.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--quick", action="store_true", help="a 1-minute drive instead of 3")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--defects", type=int, default=None, help="defects on the drive (default 12 per minute)")
    parser.add_argument("--models", default="white,drift", help="GNSS noise models to run, comma-separated")
    parser.add_argument("--speed-frames", type=int, default=300, help="frames of the clip the speed runs use")
    parser.add_argument("--speed-repeats", type=int, default=5, help="interleaved repeats of the speed runs")
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
    # No refresh thread: the speed runs time this process's CPU over all its threads.
    with tempfile.TemporaryDirectory() as tmp, \
            Steps("pipeline", 2 * len(models) + 3 + 3 * args.speed_repeats, auto_refresh=False) as steps:
        root = args.keep or Path(tmp)
        first: Path | None = None
        for model in models:
            drive = root / model
            got = replay_drive(drive, args, minutes, defects, model, steps)
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
                "crack": {"events": got["cracks"].events, "cracks": got["cracks"].defects,
                          "matched": got["cracks"].matched, "precision": round(got["cracks"].precision, 3),
                          "recall": round(got["cracks"].recall, 3),
                          "median_error_m": _round(got["cracks"].median_error_m)},
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
        speed = speed_runs(first, root / "speed", args.speed_frames, args.speed_repeats, steps)
    figures["speed"] = speed
    print(f"speed, {speed['frames']} frames x {speed['repeats']} interleaved repeats (median): "
          f"replay {speed['fps']['replay']} fps, decode+detect {speed['fps']['decode+detect']} fps, "
          f"detect only {speed['fps']['detect']} fps; CPU ms/frame {speed['cpu_ms_per_frame']}")
    print(f"  replay / decode+detect = {speed['ratio_replay_vs_decode_detect']} "
          f"(fastest runs {speed['ratio_replay_vs_decode_detect_best']}) "
          f"(CPU {speed['cpu_ratio_replay_vs_decode_detect']}); replay / detect only = "
          f"{speed['ratio_replay_vs_detect_only']} (CPU {speed['cpu_ratio_replay_vs_detect_only']})")
    # The gate is the CPU ratio: the wall-clock one (printed above) swings with the load of the shared machine.
    targets["replay / bare (decode+detect), CPU time per frame, >= 0.85"] = \
        speed["cpu_ratio_replay_vs_decode_detect"] >= 0.85
    print(json.dumps(figures))
    for name, ok in targets.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
