"""The agent on real survey-vehicle frames: does each pothole and crack the camera saw become one event?

The per-pass figures elsewhere (bench_seeds, the fleet simulator's calibration) come from rendered drives. Here
the frames are real: the validation highways of the survey set (Passos et al. 2020; highways the bundled model
never trained on), in runs of frames at most 10 m apart. The survey keeps a frame every ~5 m; a fleet camera
sees a frame every metre or so, so the frames in between are made by re-projecting each real frame on the road
plane as if the vehicle had driven on (a 10 fps camera at 36 km/h; the road ahead is real, stretched towards
the camera). `--native` replays only the real frames, at their own spacing (2 fps at 36 km/h; a frame missing
from a run is shown twice).

Assumed, since the survey's roof camera is not calibrated: horizontal field of view 70°, 2.5 m above the road,
18° down (`edge-agent calibrate check` with these draws a metre grid that fits the lane). Truth: the mask boxes of
each real frame (models.masks), projected with the same calibration onto the drive's along-track axis; boxes of a
class within 3.5 m along and 1.5 m across (potholes), or 8 m and 3 m (cracks: a strip of cracking along the lane
is one defect), are one defect. Recall counts the defects some frame saw from 8 m or farther (the runs are short:
one that first shows 5 m ahead in a run's first frame passes under the bonnet before a track can form); an event
on any true defect is not a false one. The masks mark the driven lane only, so a real defect in the next lane counts as
a false event here. An event matches a defect of its class within 3 m (cracks 6 m).

Usage: python -m bench.bench_real_frames [--survey DIR] [--native] [--keep DIR] [--quick]
                                         [--set SECTION.KEY=VALUE ...]  (agent settings, e.g. tracker.min_frames=5)
Exit code 2 when the survey set or the bundled model is absent.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import tomli_w

from bench.bench_seeds import BUNDLED, EDGE_AGENT, ROOT
from bench.common import description, parse_settings
from calibration.camera import Intrinsics, Mount
from calibration.projector import GroundProjector
from edge_agent.lab.sim.nmea_writer import Epoch, epoch_sentences
from models.data import SURVEY_VAL_HIGHWAYS
from models.masks import CLASSES, boxes_for, highway_of
from roadmon_contract.geodesy import enu_offset, offset_latlon

SURVEY = ROOT.parent / "shared" / "datasets" / "cracks-potholes-passos2020"
WIDTH, HEIGHT = 640, 394            # the survey's frames (640x400 ones are resized)
HFOV_DEG, HEIGHT_M, PITCH_DEG = 70.0, 2.5, 18.0  # assumed (module doc)
SPEED_MPS, FPS = 10.0, 10.0
HEADING_DEG, LAT0, LON0 = 80.0, -15.8, -47.9
FRAME_SPACING_M = 5.0               # the survey's frames are about 5 m apart (its README)
MAX_GAP_M = 10.0                    # a run of frames allows one missing frame
MAX_RANGE_M = 25.0                  # the tracker's default max_range_m: truth farther out is not asked for
# One defect: boxes within (along, across) metres. The assumed calibration places a pothole seen from 11 m and then
# from 5 m about 1 m apart (its scale is off by ~25 %), so 3.5 m along.
CLUSTER = {"pothole": (3.5, 1.5), "crack": (8.0, 3.0)}
SEEN_FROM_M = 8.0                   # a defect counts when a frame saw it this far ahead (module doc)
MATCH_M = {"pothole": 3.0, "crack": 6.0}


@dataclass
class Run:
    frames: list[Path]
    spacing_m: list[float]          # metres from each frame to the next (the last one: FRAME_SPACING_M)


@dataclass
class Defect:
    cls: str
    along: list[float] = field(default_factory=list)
    across: list[float] = field(default_factory=list)
    ranges: list[float] = field(default_factory=list)   # how far ahead each frame saw it

    @property
    def counted(self) -> bool:
        return max(self.ranges) >= SEEN_FROM_M

    def centre(self) -> tuple[float, float]:
        return float(np.mean(self.along)), float(np.mean(self.across))


def runs_of(survey: Path) -> list[Run]:
    """Runs of frames of the validation highways at most MAX_GAP_M apart, at least 3 frames long."""
    segments: dict[tuple[str, str], list[tuple[int, Path]]] = {}
    for path in sorted((survey / "images").glob("*.jpg")):
        parts = path.stem.split("_")
        if highway_of(path.name) in SURVEY_VAL_HIGHWAYS and len(parts) >= 5 and parts[4].isdigit():
            segments.setdefault((highway_of(path.name), parts[3]), []).append((int(parts[4]), path))
    runs = []
    for frames in segments.values():
        frames.sort()
        steps = [b[0] - a[0] for a, b in itertools.pairwise(frames) if b[0] > a[0]]
        per_number = FRAME_SPACING_M / min(steps) if steps else FRAME_SPACING_M  # some segments number every 5th
        run = [frames[0]]
        for frame in [*frames[1:], None]:
            if frame is not None and (frame[0] - run[-1][0]) * per_number <= MAX_GAP_M:
                run.append(frame)
                continue
            if len(run) >= 3:
                spacing = [(b[0] - a[0]) * per_number for a, b in itertools.pairwise(run)]
                runs.append(Run([p for _, p in run], [*spacing, FRAME_SPACING_M]))
            run = [frame] if frame is not None else []
    return runs


def projector() -> GroundProjector:
    return GroundProjector(Intrinsics.from_hfov(WIDTH, HEIGHT, HFOV_DEG), Mount(HEIGHT_M, PITCH_DEG, 0, 0, 0))


class Warper:
    """A frame re-projected on the road plane as seen S metres further on (the sky and what stands up are
    stretched with the road: a stand-in, not a photograph)."""

    def __init__(self, proj: GroundProjector) -> None:
        self.proj = proj
        u, v = np.meshgrid(np.arange(WIDTH, dtype=float), np.arange(HEIGHT, dtype=float))
        self.pixels = np.column_stack([u.ravel(), v.ravel()])
        self.ground = proj.pixels_to_ground(self.pixels)

    def __call__(self, image: np.ndarray, s: float) -> np.ndarray:
        if s <= 0:
            return image
        src = self.proj.ground_to_pixels(self.ground + np.array([s, 0.0]))
        off_road = ~np.isfinite(src).all(axis=1)
        src[off_road] = self.pixels[off_road]
        maps = src[:, 0].reshape(HEIGHT, WIDTH).astype(np.float32), src[:, 1].reshape(HEIGHT, WIDTH).astype(np.float32)
        return cv2.remap(image, *maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def build_drive(runs: list[Run], survey: Path, out: Path, native: bool) -> tuple[list[Defect], float, datetime]:
    """video.mp4, drive.json, drive.nmea and agent.toml in OUT; returns the true defects, the metres of real
    road driven and the drive's start (UTC)."""
    out.mkdir(parents=True, exist_ok=True)
    proj = projector()
    warp = Warper(proj)
    fps = SPEED_MPS / FRAME_SPACING_M if native else FPS
    step_m = SPEED_MPS / fps
    writer = cv2.VideoWriter(str(out / "video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    odometer, frames, road_m = 0.0, 0, 0.0
    truth: dict[str, list[tuple[float, float, float]]] = {c: [] for c in CLASSES}
    for run in runs:
        for path, spacing in zip(run.frames, run.spacing_m, strict=True):
            original = cv2.imread(str(path))
            image = cv2.resize(original, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
            for box in boxes_for(survey, path.stem):
                place = _on_road(proj, box.box, HEIGHT / original.shape[0])
                if place is not None:
                    truth[CLASSES[box.cls]].append((odometer + place[0], place[1], place[0]))
            shown = max(1, round(spacing / step_m))  # native: a frame missing from the run is held
            for k in range(shown):
                writer.write(image if native else warp(image, k * step_m))
            frames += shown
            odometer += shown * step_m
            road_m += spacing
        for _ in range(int(2 * fps)):  # two seconds of black between runs: no track lives across them
            writer.write(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
        frames += int(2 * fps)
        odometer += int(2 * fps) * step_m
    writer.release()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    (out / "drive.json").write_text(json.dumps({"start_utc": start.isoformat().replace("+00:00", "Z"), "fps": fps,
                                                "frames": frames, "width": WIDTH, "height": HEIGHT}))
    _write_nmea(out / "drive.nmea", start, frames / fps)
    _write_config(out, proj)
    return [d for cls, points in truth.items() for d in _cluster(cls, points)], road_m, start


def _on_road(proj: GroundProjector, box: tuple[float, float, float, float],
             y_scale: float) -> tuple[float, float] | None:
    """A mask box's centre on the road (forward, left) as the agent measures it, or None when out of range.
    Y_SCALE takes the box from its frame's height to HEIGHT (the frames are all 640 wide)."""
    x1, y1, x2, y2 = box[0], box[1] * y_scale, box[2], box[3] * y_scale
    near = proj.pixel_to_ground((x1 + x2) / 2, y2)
    far = proj.pixel_to_ground((x1 + x2) / 2, y1)
    if near is None or not 0 < near[0] <= MAX_RANGE_M:
        return None
    if far is None or far[0] > MAX_RANGE_M:
        far = near
    return (near[0] + far[0]) / 2, (near[1] + far[1]) / 2


def _cluster(cls: str, points: list[tuple[float, float, float]]) -> list[Defect]:
    reach_along, reach_across = CLUSTER[cls]
    defects: list[Defect] = []
    for along, across, ahead in sorted(points):
        near = next((d for d in defects if abs(d.centre()[0] - along) <= reach_along
                     and abs(d.centre()[1] - across) <= reach_across), None)
        if near is None:
            near = Defect(cls)
            defects.append(near)
        near.along.append(along)
        near.across.append(across)
        near.ranges.append(ahead)
    return defects


def _latlon(along: float) -> tuple[float, float]:
    h = math.radians(HEADING_DEG)
    return offset_latlon(LAT0, LON0, along * math.sin(h), along * math.cos(h))


def _write_nmea(path: Path, start: datetime, seconds: float) -> None:
    lines = []
    for t in range(-5, int(seconds) + 6):
        lat, lon = _latlon(SPEED_MPS * t)
        epoch = Epoch(utc=start + timedelta(seconds=t), lat=lat, lon=lon, alt_m=1100.0, speed_mps=SPEED_MPS,
                      course_deg=HEADING_DEG, sats=10, hdop=0.9, sigma_lat_m=1.0, sigma_lon_m=1.0, sigma_alt_m=2.0)
        lines += epoch_sentences(epoch)
    path.write_text("\r\n".join(lines) + "\r\n", encoding="ascii")


def _write_config(out: Path, proj: GroundProjector) -> None:
    intr = proj.intrinsics
    (out / "agent.toml").write_text(f"""[device]
id = "real-frames"
state_dir = "{out / 'state'}"

[calibration]
width = {WIDTH}
height = {HEIGHT}
fx = {intr.fx}
fy = {intr.fy}
cx = {intr.cx}
cy = {intr.cy}
dist = []
height_m = {HEIGHT_M}
pitch_deg = {PITCH_DEG}
""", encoding="utf-8")


def along_across(event: dict) -> tuple[float, float]:
    east, north = enu_offset(LAT0, LON0, event["position"]["lat"], event["position"]["lon"])
    h = math.radians(HEADING_DEG)
    return east * math.sin(h) + north * math.cos(h), -east * math.cos(h) + north * math.sin(h)


def score(events: list[dict], truth: list[Defect], road_km: float) -> dict[str, dict]:
    out = {}
    for cls in CLASSES:
        defects = [d for d in truth if d.cls == cls]
        centres = [d.centre() for d in defects]
        hits = [0] * len(defects)
        false = 0
        for event in (e for e in events if e["class"] == cls):
            a, c = along_across(event)
            dist = [math.hypot(a - da, c - dc) for da, dc in centres]
            if dist and min(dist) <= MATCH_M[cls]:
                hits[int(np.argmin(dist))] += 1
            else:
                false += 1
        counted = [h for d, h in zip(defects, hits, strict=True) if d.counted]
        found = sum(1 for h in counted if h)
        out[cls] = {"defects": len(counted), "events": sum(1 for e in events if e["class"] == cls),
                    "found": found, "recall": round(found / len(counted), 3) if counted else None,
                    "defects_with_two_events": sum(1 for h in hits if h > 1),
                    "events_on_no_defect": false, "false_per_km": round(false / road_km, 1) if road_km else None}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--survey", type=Path, default=SURVEY)
    parser.add_argument("--native", action="store_true", help="only the real frames, at their own spacing")
    parser.add_argument("--keep", type=Path, help="keep the drive in this folder")
    parser.add_argument("--quick", action="store_true",
                        help="the same run (about a minute; for `python -m bench.run_all --quick`)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an agent setting for this run, e.g. tracker.confirm_score=0.55 (repeatable; not the "
                             "calibration, which the bench sets)")
    args = parser.parse_args()
    try:
        settings = parse_settings(args.set)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"bench_real_frames: {exc}", file=sys.stderr)
        return 2
    if not (args.survey / "images").is_dir():
        print(f"bench_real_frames: the survey set is not at {args.survey} (../shared/datasets)", file=sys.stderr)
        return 2
    if not BUNDLED.exists():
        print("bench_real_frames: no bundled model (models/bundled/model.onnx)", file=sys.stderr)
        return 2
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench_real_frames_"))
    runs = runs_of(args.survey)
    truth, road_m, _ = build_drive(runs, args.survey, out, args.native)
    if settings:
        with (out / "agent.toml").open("a", encoding="utf-8") as f:
            f.write("\n" + tomli_w.dumps(settings))
    (out / "outbox.db").unlink(missing_ok=True)
    done = subprocess.run([str(EDGE_AGENT), "replay", "--video", str(out / "video.mp4"), "--nmea",
                           str(out / "drive.nmea"), "--config", str(out / "agent.toml"), "--outbox",
                           str(out / "outbox.db"), "--json"], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    from edge_agent.link.outbox import Outbox

    with Outbox(out / "outbox.db") as box:
        events = [event for _, event in box.iter_events()]
    result = score(events, truth, road_m / 1000)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{len(runs)} runs of real frames, {sum(len(r.frames) for r in runs)} frames, {road_m:.0f} m of road; "
          f"{'native spacing' if args.native else f'{FPS:g} fps with re-projected frames between'}, "
          f"{summary.get('m_per_frame')} m per processed frame")
    print(f"{'class':>8} {'defects':>7} {'events':>6} {'found':>5} {'recall':>6} {'2 events':>8} "
          f"{'no defect':>9} {'per km':>6}")
    for cls, r in result.items():
        print(f"{cls:>8} {r['defects']:>7} {r['events']:>6} {r['found']:>5} {r['recall'] or 0:>6.2f} "
              f"{r['defects_with_two_events']:>8} {r['events_on_no_defect']:>9} {r['false_per_km'] or 0:>6.1f}")
    print(json.dumps({"bench": "real_frames", "native": args.native, "settings": settings, "road_m": round(road_m),
                      "runs": len(runs), "per_class": result, "m_per_frame": summary.get("m_per_frame")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
