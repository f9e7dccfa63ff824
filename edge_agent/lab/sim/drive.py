"""`edge-agent sim drive`: a deterministic synthetic drive with ground truth.

Writes into OUT: video.mp4 (frame k captured at start_utc + k/fps), drive.nmea (RMC+VTG+GGA+GST at nmea_hz,
starting LEAD_S before the video so a position filter is settled), truth.csv, defects.geojson, boxes.csv
(each pothole's image box in each frame it was drawn in), agent.toml (an agent config with the camera used)
and drive.json.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from calibration.camera import Intrinsics, Mount
from calibration.projector import GroundProjector
from edge_agent.lab.sim.gnss_noise import NoiseModel, gnss_errors
from edge_agent.lab.sim.nmea_writer import Epoch, epoch_sentences
from edge_agent.lab.sim.paint import pothole_sprite, random_crack
from edge_agent.lab.sim.render import DriveRenderer, Exposure, PaintedDefect
from edge_agent.lab.sim.route import (
    GEO_ORIGIN,
    compass_deg,
    random_route,
    simulate_motion,
    vehicle_pose,
)
from edge_agent.lab.sim.surface import RoadStyle, random_style
from roadmon_contract.geodesy import LocalFrame
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)

LEAD_S = 5.0                       # GNSS (and truth) start this long before the first frame
START_UTC = dt.datetime(2026, 5, 12, 7, 30, tzinfo=dt.UTC)
DRIVE_HFOV_DEG = 70.0
# A fleet vehicle's camera (van, bus, refuse truck) behind the windscreen, 2 m up: higher than a car's dash cam,
# which shows potholes less foreshortened and for longer. Small roll/yaw exercise the calibration.
DRIVE_MOUNT = Mount(height_m=2.0, pitch_deg=14.0, roll_deg=0.5, yaw_deg=-1.0, lateral_m=0.0)
ALTITUDE_M = 519.0                 # Munich
POTHOLE_SHARE = 2 / 3
DRIVE_SPRITE_PX = 128              # potholes pass close to the camera: sharper sprites than training's
MIN_DEFECT_GAP_M = 20.0


@dataclass
class DriveSpec:
    out: Path
    seed: int = 1
    minutes: float = 2.0
    gps_noise_m: float = 3.0       # horizontal RMS error (each axis gets gps_noise_m / sqrt(2))
    gps_noise_model: NoiseModel = "white"  # white: independent per epoch; drift: a real receiver's wander
    nmea_hz: float = 1.0
    defects: int = 12
    potholes: int | None = None    # exact pothole count (cracks: defects - potholes); None = 2/3 of defects
    fps: float = 15.0
    width: int = 640
    height: int = 360
    start: dt.datetime | None = None  # the first frame's UTC; None: a fixed date per seed (byte-for-byte drives)


@dataclass
class DriveResult:
    frames: int
    seconds_rendering: float
    distance_m: float
    defects: list[dict] = field(default_factory=list)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent random streams, so that e.g. the resolution does not change the route."""
    names = ["route", "motion", "style", "defects", "render", "gnss"]
    return {n: np.random.default_rng(s) for n, s in zip(names, np.random.SeedSequence(seed).spawn(len(names)),
                                                         strict=True)}


def start_utc(seed: int) -> dt.datetime:
    return START_UTC + dt.timedelta(minutes=seed % 600)


def drive_camera(width: int, height: int) -> GroundProjector:
    return GroundProjector(Intrinsics.from_hfov(width, height, DRIVE_HFOV_DEG), DRIVE_MOUNT)


def _place_defects(rng: np.random.Generator, spec: DriveSpec, s_first: float, s_last: float,
                   style: RoadStyle) -> list[dict]:
    """Defects along the driven stretch, in the ego lane so the camera passes over or next to them, clear of
    the lane's painted lines."""
    lane_centre = style.ego_lane_centre
    n = spec.defects if spec.potholes is None else max(spec.defects, spec.potholes)
    n_potholes = round(n * POTHOLE_SHARE) if spec.potholes is None else spec.potholes
    if n == 0 or s_last <= s_first:
        return []
    gap = min(MIN_DEFECT_GAP_M, (s_last - s_first) / (n + 1))
    slots = np.sort(rng.uniform(0, (s_last - s_first) - gap * (n - 1), n)) + np.arange(n) * gap + s_first
    classes = ["pothole"] * n_potholes + ["crack"] * (n - n_potholes)
    rng.shuffle(classes)
    out = []
    for i, (s, cls) in enumerate(zip(slots, classes, strict=True)):
        size = float(rng.uniform(0.3, 1.2) if cls == "pothole" else rng.uniform(0.8, 2.5))
        # Keep the whole defect inside the lane: half its size plus the paint and a margin from each line.
        room = max(0.0, style.lane_width / 2 - size / 2 - style.line_width_m / 2 - 0.1)
        out.append({"index": i, "class": cls, "s_m": float(s),
                    "offset_m": float(lane_centre + rng.uniform(-min(1.0, room), min(1.0, room))),
                    "yaw_rel": float(rng.uniform(-math.pi / 2, math.pi / 2)), "size": size})
    return out


def _nmea_epochs(spec: DriveSpec, frame: LocalFrame, truth_at: Callable, rng: np.random.Generator,
                 t0: dt.datetime) -> list[Epoch]:
    times = np.arange(-LEAD_S, spec.minutes * 60 + 1e-9, 1.0 / spec.nmea_hz)
    err = gnss_errors(rng, times, spec.gps_noise_m, spec.gps_noise_model)
    axis_sigma = spec.gps_noise_m / math.sqrt(2)  # GST reports the honest per-axis sigma
    east, north, heading, speed = truth_at(times)
    lat, lon = frame.to_geodetic(east + err.east_m, north + err.north_m)
    course = compass_deg(heading)
    epochs = []
    for i, t in enumerate(times):
        v = max(0.0, float(speed[i] + err.speed_err_mps[i])) if speed[i] > 0.05 else 0.0
        epochs.append(Epoch(
            utc=t0 + dt.timedelta(seconds=float(t)), lat=float(lat[i]), lon=float(lon[i]),
            alt_m=ALTITUDE_M + float(err.alt_err_m[i]), speed_mps=v,
            course_deg=float(course[i] + rng.normal(0, min(20.0, math.degrees(0.1 / max(v, 0.1))))),
            sats=int(err.sats[i]), hdop=float(err.hdop[i]),
            sigma_lat_m=axis_sigma, sigma_lon_m=axis_sigma, sigma_alt_m=axis_sigma * 1.6))
    return epochs


def _agent_toml(spec: DriveSpec, projector: GroundProjector, out: Path) -> str:
    intr, m = projector.intrinsics, projector.mount
    return "\n".join([
        f"# agent config for the simulated drive (seed {spec.seed}): the camera is exactly the one rendered",
        "[device]",
        f'id = "sim-{spec.seed}"',
        f"state_dir = {json.dumps(str((out / 'state').resolve()))}",
        "",
        "[camera]",
        f"source = {json.dumps(str((out / 'video.mp4').resolve()))}",
        "",
        "[gnss]",
        'source = "file"',
        f"file = {json.dumps(str((out / 'drive.nmea').resolve()))}",
        "",
        "[calibration]",
        f"width = {intr.width}", f"height = {intr.height}",
        f"fx = {intr.fx!r}", f"fy = {intr.fy!r}", f"cx = {intr.cx!r}", f"cy = {intr.cy!r}", "dist = []",
        f"height_m = {m.height_m!r}", f"pitch_deg = {m.pitch_deg!r}", f"roll_deg = {m.roll_deg!r}",
        f"yaw_deg = {m.yaw_deg!r}", f"lateral_m = {m.lateral_m!r}", "",
    ])


def simulate_drive(spec: DriveSpec, progress: Callable[[int, int], None] | None = None) -> DriveResult:
    """Render the drive described by `spec` into spec.out; `progress(done, total)` after each frame."""
    if spec.width % 2 or spec.height % 2:
        raise ValueError(f"frame size {spec.width}x{spec.height}: width and height must be even "
                         "(the MPEG-4 encoder drops an odd last row/column)")
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    rngs = _streams(spec.seed)
    t0 = spec.start.astimezone(dt.UTC) if spec.start is not None else start_utc(spec.seed)
    duration = spec.minutes * 60.0
    frames = round(duration * spec.fps)
    lat0, lon0 = GEO_ORIGIN
    geo = LocalFrame(lat0 + rngs["route"].uniform(-0.01, 0.01), lon0 + rngs["route"].uniform(-0.015, 0.015))
    route = random_route(rngs["route"], 60 + (duration + LEAD_S) * 15.5)
    motion = simulate_motion(rngs["motion"], route, -LEAD_S, duration + 1.0, s0=30.0)
    style = random_style(rngs["style"])
    style.lanes_per_side = 1
    lane = style.ego_lane_centre

    def truth_at(t):
        s, v = motion.at(t)
        pose = vehicle_pose(route, s, lane)
        return pose.east, pose.north, pose.heading, v

    # Defects on the stretch the camera sees while the video runs (from a little ahead at the start).
    s_video0 = float(motion.at(0.0)[0])
    s_video1 = float(motion.at(duration)[0])
    placed = _place_defects(rngs["defects"], spec, s_video0 + 15.0, s_video1 + 2.0, style)
    painted = []
    for p in placed:
        e, n, th = route.at(p["s_m"])
        p["east"] = float(e - math.sin(th) * p["offset_m"])
        p["north"] = float(n + math.cos(th) * p["offset_m"])
        p["yaw"] = float(th + p["yaw_rel"])
        if p["class"] == "pothole":
            # The drive keeps to the classic dark hollow: the kind every detector must find.
            sprite = pothole_sprite(rngs["defects"], p["size"], DRIVE_SPRITE_PX, kind="dark")
            p["width_m"], p["length_m"] = sprite.width_m, sprite.length_m
            painted.append(PaintedDefect(p["index"], p["east"], p["north"], p["yaw"], sprite=sprite))
        else:
            crack = random_crack(rngs["defects"], p["size"])
            # The truth of a crack is a line: its principal axis, as long as the drawn crack and centred on it.
            centre, p["length_m"], p["width_m"], angle = crack.axis()
            c, s_ = math.cos(p["yaw"]), math.sin(p["yaw"])
            p["centre"] = (p["east"] + centre[0] * c - centre[1] * s_, p["north"] + centre[0] * s_ + centre[1] * c)
            p["axis_yaw"] = p["yaw"] + angle
            painted.append(PaintedDefect(p["index"], p["east"], p["north"], p["yaw"], crack=crack))

    projector = drive_camera(spec.width, spec.height)
    exposure = Exposure(gain=float(rngs["style"].uniform(0.85, 1.15)), gamma=1.0,
                        noise_sigma=float(rngs["style"].uniform(1.5, 3.0)))
    renderer = DriveRenderer(projector, style, route, rngs["render"], exposure)

    writer = cv2.VideoWriter(str(out / "video.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), spec.fps,
                             (spec.width, spec.height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v video to {out / 'video.mp4'}")
    seen: dict[int, list[int]] = {}
    box_rows: list[tuple[int, int, tuple[float, float, float, float]]] = []
    started = time.monotonic()
    try:
        for k in range(frames):
            t = k / spec.fps
            s, _ = motion.at(t)
            east, north, heading, _ = truth_at(t)
            frame, boxes = renderer.render(float(east), float(north), float(heading), float(s), painted,
                                           rngs["render"])
            for idx, box in boxes.items():
                seen.setdefault(idx, []).append(k)
                box_rows.append((k, idx, box))
            writer.write(frame)
            if progress:
                progress(k + 1, frames)
    finally:
        writer.release()
    rendering_s = time.monotonic() - started
    _check_video(out / "video.mp4", frames, spec.width, spec.height)

    epochs = _nmea_epochs(spec, geo, truth_at, rngs["gnss"], t0)
    with (out / "drive.nmea").open("w", encoding="ascii", newline="") as fh:
        for e in epochs:
            fh.write("".join(line + "\r\n" for line in epoch_sentences(e)))

    _write_truth(out / "truth.csv", geo, truth_at, t0, duration)
    with (out / "boxes.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "id", "class", "x1", "y1", "x2", "y2"])
        for k, idx, (x1, y1, x2, y2) in box_rows:
            w.writerow([k, f"d{idx + 1:03d}", placed[idx]["class"], f"{x1:.0f}", f"{y1:.0f}", f"{x2:.0f}", f"{y2:.0f}"])
    features = []
    for p in placed:
        east, north = p.get("centre", (p["east"], p["north"]))
        lat, lon = geo.to_geodetic(east, north)
        frames_seen = seen.get(p["index"], [])
        line = {}
        if "axis_yaw" in p:  # a crack: its long axis, end to end ([lon, lat] pairs) and as a compass bearing
            half = np.array([math.cos(p["axis_yaw"]), math.sin(p["axis_yaw"])]) * p["length_m"] / 2
            ends = [geo.to_geodetic(east + sign * half[0], north + sign * half[1]) for sign in (-1, 1)]
            line = {"line": [[round(float(lo), 8), round(float(la), 8)] for la, lo in ends],
                    "orientation_deg": round(float(compass_deg(p["axis_yaw"])) % 180.0, 1)}
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]},
                         "properties": {
                             "id": f"d{p['index'] + 1:03d}", "class": p["class"],
                             "width_m": round(p["width_m"], 3), "length_m": round(p["length_m"], 3),
                             "route_s_m": round(p["s_m"], 2), "offset_m": round(p["offset_m"], 3),
                             "orientation_deg": round(float(compass_deg(p["yaw"])), 1), **line,
                             "first_frame": frames_seen[0] if frames_seen else None,
                             "last_frame": frames_seen[-1] if frames_seen else None,
                             "frames_boxed": len(frames_seen)}})
    (out / "defects.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1)
                                         + "\n", encoding="utf-8")
    (out / "agent.toml").write_text(_agent_toml(spec, projector, out), encoding="utf-8")
    meta = {"start_utc": t0.isoformat().replace("+00:00", "Z"), "fps": spec.fps, "frames": frames,
            "width": spec.width, "height": spec.height, "seed": spec.seed, "minutes": spec.minutes,
            "gps_noise_m": spec.gps_noise_m,
            "gps_noise_model": spec.gps_noise_model, "nmea_hz": spec.nmea_hz, "defects": len(placed),
            "potholes": sum(p["class"] == "pothole" for p in placed), "nmea_lead_s": LEAD_S,
            "distance_m": round(s_video1 - s_video0, 1), "origin": {"lat": geo.lat0, "lon": geo.lon0}}
    (out / "drive.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("rendered %d frames in %.1f s", frames, rendering_s)
    return DriveResult(frames, rendering_s, s_video1 - s_video0, features)


def _check_video(path: Path, frames: int, width: int, height: int) -> None:
    """The container must say what we wrote: a codec that silently failed leaves a short or empty file."""
    cap = cv2.VideoCapture(str(path))
    try:
        got = (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
               int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()
    if got != (frames, width, height):
        raise RuntimeError(f"{path}: the video holds {got[0]} frames of {got[1]}x{got[2]}, expected {frames} of "
                           f"{width}x{height}")


def _write_truth(path: Path, geo: LocalFrame, truth_at: Callable, t0: dt.datetime, duration: float) -> None:
    """The true path every 0.1 s: t (s since start_utc), utc, lat, lon, speed (m/s), heading (deg, compass)."""
    times = np.round(np.arange(-LEAD_S, duration + 1e-9, 0.1), 3)
    east, north, heading, speed = truth_at(times)
    lat, lon = geo.to_geodetic(east, north)
    course = compass_deg(heading)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["t", "utc", "lat", "lon", "speed", "heading"])
        for i, t in enumerate(times):
            utc = utc_iso(t0 + dt.timedelta(seconds=float(t)))
            w.writerow([f"{t:.3f}", utc, f"{lat[i]:.8f}", f"{lon[i]:.8f}", f"{speed[i]:.3f}", f"{course[i]:.2f}"])
