"""Simulator speed: training scenes per second and drive rendering against real time.

Figures are CPU seconds of this process (time.process_time), which on a shared machine is closer to what one
idle core would take than wall time; both are printed. --quick renders fewer scenes and a shorter drive.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edge_agent.lab.sim.drive import DriveSpec, simulate_drive
from edge_agent.lab.sim.render import random_training_scene


def bench_training(n: int) -> None:
    rng = np.random.default_rng(0)
    random_training_scene(rng, 320, 320)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    boxes = 0
    for _ in range(n):
        boxes += len(random_training_scene(rng, 320, 320)[1])
    cpu = (time.process_time() - cpu0) / n * 1000
    wall = (time.perf_counter() - wall0) / n * 1000
    print(f"training scene 320x320: {cpu:.1f} ms CPU, {wall:.1f} ms wall per scene (target < 20 ms), "
          f"{boxes / n:.2f} potholes per scene")


def bench_drive(seconds: float) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = simulate_drive(DriveSpec(out=out / "d", seed=1, minutes=seconds / 60.0))
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    per_frame = cpu / result.frames * 1000
    print(f"drive 640x360 @15 fps, {seconds:.0f} s of video: {result.frames} frames, {cpu:.1f} s CPU "
          f"({per_frame:.1f} ms/frame), {wall:.1f} s wall; rendering runs at {seconds / cpu:.2f}x real time "
          f"(CPU); a 2-minute drive takes about {per_frame * 1800 / 1000:.0f} s CPU (target well under 60 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer scenes, a shorter drive")
    args, _ = ap.parse_known_args()
    cv2.setNumThreads(1)  # "on one core"
    bench_training(40 if args.quick else 200)
    bench_drive(10 if args.quick else 120)


if __name__ == "__main__":
    main()
