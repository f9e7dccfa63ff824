"""How well `calibrate mount` finds the vanishing point and the lane on real frames: the survey vehicle's frames
(Passos et al. 2020) come with a mask of the lane driven in, whose two edges meet at the vanishing point of the
road ahead. Each frame's point from its painted markings is compared with the one from its mask.

    python -m models.mount_eval [--survey DIR] [--step 4]

`--watch` asks instead what the agent's mount watch (edge_agent.perception.mount_watch) would say on each highway:
windows of frames read against the mount the masks show (it should say ok) and against that mount with the pitch
or yaw changed (it should say moved once a defect 15 m ahead is misplaced by more than the limit).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from rich.progress import track

from calibration.camera import Intrinsics, Mount
from calibration.mount_fit import REF_ROW, fit_frame, mount_from_vanishing_point


def mask_lane(mask: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The vanishing point where the lane mask's left and right edges meet, and their columns at REF_ROW; None
    when the mask does not show both edges over enough rows."""
    h, w = mask.shape
    rows, left, right = [], [], []
    for v in range(int(0.15 * h), int(0.97 * h)):
        cols = np.nonzero(mask[v])[0]
        if len(cols) >= 5 and cols[0] > 1 and cols[-1] < w - 2:  # an edge cut by the frame is no edge
            rows.append(v)
            left.append(cols[0])
            right.append(cols[-1])
    if len(rows) < 30:
        return None
    al, bl = np.polyfit(rows, left, 1)
    ar, br = np.polyfit(rows, right, 1)
    if abs(al - ar) < 1e-6:
        return None
    v0 = (br - bl) / (al - ar)
    row = REF_ROW * h
    return (float(al * v0 + bl), float(v0)), (float(al * row + bl), float(ar * row + br))


def compare(survey: Path, step: int) -> dict:
    """Per frame, the markings' vanishing point and lane columns against the mask's."""
    stems = sorted(p.stem for p in (survey / "images").iterdir())[::step]
    d_vp, d_lane, no_mask, no_fit, by_road = [], [], 0, 0, {}
    for stem in track(stems, description="frames"):
        mask = cv2.imread(str(survey / "masks" / "lane" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        truth = mask_lane(mask > 127) if mask is not None else None
        if truth is None:
            no_mask += 1
            continue
        fit = fit_frame(cv2.imread(str(survey / "images" / f"{stem}.jpg")))
        if fit is None:
            no_fit += 1
            continue
        d_vp.append((fit.vp[0] - truth[0][0], fit.vp[1] - truth[0][1]))
        by_road.setdefault(stem.split("_")[1] + "_" + stem.split("_")[2], []).append((fit.vp, truth[0]))
        if fit.boundaries is not None:
            d_lane.append((fit.boundaries[0] - truth[1][0], fit.boundaries[1] - truth[1][1]))
    # What an installer gets from a stretch of road: the median of many frames' points, against the masks' median.
    per_road = {road: np.median([f for f, _ in pairs], axis=0) - np.median([t for _, t in pairs], axis=0)
                for road, pairs in by_road.items() if len(pairs) >= 10}
    return {"frames": len(stems), "no_mask_lane": no_mask, "no_markings": no_fit,
            "vp_error_px": np.array(d_vp).reshape(-1, 2), "lane_error_px": np.array(d_lane).reshape(-1, 2),
            "per_road_px": per_road}


SURVEY_HFOV_DEG = 70.0  # the survey's camera is unknown: a 70 deg lens, as above (frames are 640x394 or 640x400)
CHANGES = {"as the masks show": (0.0, 0.0), "pitch +1°": (1.0, 0.0), "pitch +2°": (2.0, 0.0),
           "pitch -2°": (-2.0, 0.0), "yaw +3°": (0.0, 3.0)}


def watch(survey: Path, step: int, window: int, moved_m: float) -> dict[str, dict[str, int]]:
    """Per change of the configured mount, how many windows of WINDOW frames (every STEP-th of a highway, in
    order) the mount watch judged ok, moved or unclear."""
    from edge_agent.config.calibration import CalibrationConfig
    from edge_agent.perception.mount_watch import read_mount

    judge = CalibrationConfig(mount_moved_m=moved_m)

    by_road: dict[str, list[str]] = {}
    for stem in sorted(p.stem for p in (survey / "images").iterdir()):
        by_road.setdefault("_".join(stem.split("_")[1:3]), []).append(stem)
    counts = {name: {"ok": 0, "moved": 0, "unclear": 0} for name in CHANGES}
    for stems in track([s[::step] for s in by_road.values() if len(s[::step]) >= window], description="highways"):
        fits, truths = [], []
        for stem in stems:
            image = cv2.imread(str(survey / "images" / f"{stem}.jpg"))
            mask = cv2.imread(str(survey / "masks" / "lane" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
            truth = mask_lane(mask > 127) if mask is not None else None
            if truth is not None:
                truths.append(truth[0])
            fits.append(fit_frame(image))
        if len(truths) < window:
            continue
        intr = Intrinsics.from_hfov(image.shape[1], image.shape[0], SURVEY_HFOV_DEG)  # square pixels
        vp = np.median(np.array(truths), axis=0)
        shown = mount_from_vanishing_point(intr, (float(vp[0]), float(vp[1])), Mount(height_m=2.0))
        found = [f for f in fits if f is not None]
        for start in range(0, len(found) - window + 1, window):
            for name, (d_pitch, d_yaw) in CHANGES.items():
                configured = Mount(height_m=2.0, pitch_deg=shown.pitch_deg + d_pitch, yaw_deg=shown.yaw_deg + d_yaw)
                counts[name][read_mount(found[start:start + window], intr, configured, judge).state] += 1
    return counts


def main() -> None:
    from models.data import DEFAULT_SURVEY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survey", type=Path, default=DEFAULT_SURVEY)
    parser.add_argument("--step", type=int, default=4, help="every STEP-th frame")
    parser.add_argument("--watch", action="store_true", help="judge the agent's mount watch instead")
    parser.add_argument("--window", type=int, default=10, help="with --watch: frames per judgement")
    parser.add_argument("--moved-m", type=float, default=1.5, help="with --watch: calibration.mount_moved_m")
    args = parser.parse_args()
    if args.watch:
        counts = watch(args.survey, args.step, args.window, args.moved_m)
        print(f"windows of {args.window} frames (every {args.step}. of a highway), mount_moved_m {args.moved_m}:")
        for name, c in counts.items():
            total = max(sum(c.values()), 1)
            print(f"  config {name:>18}: ok {c['ok']:3d}, moved {c['moved']:3d}, unclear {c['unclear']:3d} "
                  f"(moved {c['moved'] / total:.0%})")
        return
    r = compare(args.survey, args.step)
    vp, lane = np.abs(r["vp_error_px"]), np.abs(r["lane_error_px"])
    judged = len(vp) + r["no_markings"]
    print(f"{r['frames']} frames, {judged} with both lane edges in the mask; markings met in {len(vp)} "
          f"({len(vp) / max(judged, 1):.0%})")
    print(f"vanishing point, markings vs mask: median |du| {np.median(vp[:, 0]):.1f} px, |dv| "
          f"{np.median(vp[:, 1]):.1f} px; 90th percentile {np.percentile(vp[:, 0], 90):.1f} / "
          f"{np.percentile(vp[:, 1], 90):.1f} px; median dv {np.median(r['vp_error_px'][:, 1]):+.1f} px (pitch bias)")
    f = 320 / np.tan(np.radians(35))  # these 640-px frames at a 70 deg lens: degrees of pitch per pixel
    for road, (du, dv) in sorted(r["per_road_px"].items()):
        print(f"  {road}: median of the frames' points against the masks' median: du {du:+.1f} px, dv {dv:+.1f} px "
              f"({np.degrees(np.arctan(dv / f)):+.2f} deg of pitch at a 70 deg lens)")
    if len(lane):
        print(f"lane lines at {REF_ROW:.0%} of the height ({len(lane)} frames): median |error| left "
              f"{np.median(lane[:, 0]):.1f} px, right {np.median(lane[:, 1]):.1f} px")


if __name__ == "__main__":
    main()
