"""The agent's camera mount check (edge_agent/perception/mount_watch.py): what one fit costs against one look
of the detector at the same frame, at the frame sizes cameras deliver, and how it judges real survey frames
(models/mount_eval.py --watch, when the survey is there).

    python -m bench.bench_mount_check [--frames 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import description
from calibration.mount_fit import fit_frame

SIZES = ((640, 360), (1280, 720), (1920, 1080))


def road_frames(survey: Path | None, count: int) -> list[np.ndarray]:
    """Real survey frames when there, else rendered ones (a straight lane with markings)."""
    if survey is not None and (survey / "images").is_dir():
        paths = sorted((survey / "images").glob("*.jpg"))[::50][:count]
        return [cv2.imread(str(p)) for p in paths]
    from calibration.camera import Intrinsics, Mount
    from calibration.projector import GroundProjector

    road = GroundProjector(Intrinsics.from_hfov(640, 360, 70), Mount(height_m=1.6, pitch_deg=11.0))
    frames = []
    for k in range(count):
        image = np.full((360, 640, 3), 90, np.uint8)
        for left in (1.8, -1.8):
            for s in np.arange(3.0 - (k % 6), 80.0, 6.0):
                quad = road.ground_to_pixels(np.array([(s, left - .07), (s + 3, left - .07), (s + 3, left + .07),
                                                       (s, left + .07)]))
                if not np.isnan(quad).any():
                    cv2.fillPoly(image, [np.round(quad).astype(np.int32)], (235, 235, 235))
        frames.append(image)
    return frames


def ms_per_call(fn, items: list) -> tuple[float, float]:
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    from models.data import DEFAULT_SURVEY

    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--frames", type=int, default=20)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    survey = DEFAULT_SURVEY if DEFAULT_SURVEY.is_dir() else None
    frames = road_frames(survey, args.frames)
    print(f"{len(frames)} {'survey' if survey else 'drawn'} frames, one thread")
    try:
        from edge_agent.config.detector import DetectorConfig
        from edge_agent.detect.detector import load_detector

        detector = load_detector(DetectorConfig(model="bundled", threads=1))
    except Exception as exc:  # no bundled model in this checkout: the fit's own time still says enough
        print(f"(no detector to compare with: {exc})")
        detector = None
    for width, height in SIZES:
        sized = [cv2.resize(f, (width, height)) for f in frames]
        fit_med, fit_max = ms_per_call(fit_frame, sized)
        line = f"{width}x{height}: one fit {fit_med:.0f} ms median, {fit_max:.0f} ms max"
        if detector is not None:
            det_med, _ = ms_per_call(detector.detect, sized)
            line += f"; one detector look {det_med:.0f} ms: a fit costs {fit_med / det_med:.1f} looks"
        print(line + ", once per 30 s of straight driving by default")
    if survey is None:
        print("the survey frames are not there: skipped how the check judges them")
        return
    from models.mount_eval import CHANGES, watch

    counts = watch(survey, 2, 10, 1.5)
    print("windows of 10 survey frames judged against the mount the lane masks show, and with it changed:")
    for name in CHANGES:
        c = counts[name]
        print(f"  {name:>18}: ok {c['ok']}, moved {c['moved']}, unclear {c['unclear']}")


if __name__ == "__main__":
    main()
