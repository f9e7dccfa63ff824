"""Frames of the simulated road: the camera's per-pixel ground map, the surface, painted defects, sky, exposure.

`CameraView` holds what depends only on the camera (each pixel's ground point and footprint); `compose`
turns road coordinates plus defects into a finished frame. `random_training_scene` draws a whole random
scene for the detector's training data; the drive renderer (`DriveRenderer`) uses the same pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from calibration.camera import Intrinsics, Mount
from calibration.projector import GroundProjector
from edge_agent.lab.sim.paint import (
    Crack,
    Sprite,
    paint_crack,
    paint_patch,
    paint_sprite,
    pothole_sprite,
    random_crack,
)
from edge_agent.lab.sim.route import Route
from edge_agent.lab.sim.surface import RoadStyle, random_style, shade_surface, shadow_factor, texture_gains

MAX_RENDER_RANGE_M = 120.0
POTHOLE = "pothole"
CRACK = "crack"
MIN_BOX_PX = 4.0   # training potholes smaller than this (either side) are not painted


class CameraView:
    """Per-pixel ground geometry of one camera (fixed for a drive)."""

    def __init__(self, projector: GroundProjector, max_range_m: float = MAX_RENDER_RANGE_M) -> None:
        self.projector = projector
        intr = projector.intrinsics
        w, h = intr.width, intr.height
        f, left = projector.ground_map()
        with np.errstate(invalid="ignore"):
            self.ground_mask = np.isfinite(f) & (f > 0) & (f < max_range_m)
        # Beyond the render range (or above the horizon) pretend the road continues at max range, so textures and
        # haze stay finite; `ground_mask` marks what is real.
        far = np.float32(max_range_m)
        self.forward = np.where(self.ground_mask, f, far)
        fallback_left = (np.arange(w, dtype=np.float32)[None, :] - np.float32(intr.cx)) * (far / np.float32(intr.fx))
        self.left = np.where(self.ground_mask, left, -fallback_left)
        self.inv_fp_along = 1.0 / np.maximum(np.abs(np.gradient(self.forward, axis=0)), np.float32(1e-3))
        self.inv_fp_across = 1.0 / np.maximum(np.abs(np.gradient(self.left, axis=1)), np.float32(1e-3))
        rows = np.flatnonzero(self.ground_mask.any(axis=1))
        # Rows above the first that sees road are pure sky: the surface is not computed there.
        self.row0 = int(rows[0]) if len(rows) else h
        self.homography = projector.ground_homography()
        self.horizon_v = projector.horizon_v()
        self.width, self.height = w, h


def _sky(view: CameraView, style: RoadStyle, rng: np.random.Generator) -> list[np.ndarray]:
    """Sky gradient with a ragged band of distant trees/buildings standing on the horizon, as B, G, R planes."""
    h, w = view.height, view.width
    rows = np.arange(h, dtype=np.float32)[:, None]
    t = np.clip((view.horizon_v - rows) / max(h, 1), 0, 1)
    top = np.array([rng.uniform(200, 250), rng.uniform(170, 220), rng.uniform(130, 200)], np.float32)
    profile = cv2.GaussianBlur(rng.random((1, w)).astype(np.float32), (0, 0), rng.uniform(2, 12)).ravel()
    profile = (profile - profile.min()) / (np.ptp(profile) + 1e-6) * rng.uniform(0.03, 0.2) * h
    clutter = np.array([rng.uniform(40, 110), rng.uniform(60, 120), rng.uniform(40, 110)], np.float32)
    above = (view.horizon_v - rows) < profile[None, :]
    return [np.where(above, clutter[c], style.haze_bgr[c] * (1 - t) + top[c] * t).astype(np.float32)
            for c in range(3)]


@dataclass
class Exposure:
    gain: float = 1.0
    gamma: float = 1.0
    noise_sigma: float = 2.0

    def lut(self) -> np.ndarray | None:
        if self.gamma == 1.0:
            return None
        x = np.arange(256, dtype=np.float32) / 255.0
        return np.clip(255.0 * np.power(x, self.gamma), 0, 255).astype(np.uint8)


def backdrop(view: CameraView, style: RoadStyle, sky: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """What does not depend on the road texture: per pixel, surface weight (1 - haze, 0 for sky) and the
    additive haze/sky colour planes. A frame is surface * weight + add."""
    haze = 1.0 - np.exp(-view.forward / np.float32(style.haze_range_m))
    weight = np.where(view.ground_mask, 1.0 - haze, 0.0).astype(np.float32)
    add = [np.where(view.ground_mask, haze * style.haze_bgr[c], sky[c]).astype(np.float32) for c in range(3)]
    return weight, add


def compose(view: CameraView, style: RoadStyle, s: np.ndarray, d: np.ndarray, weight: np.ndarray,
            add: list[np.ndarray], paint: Callable[[list[np.ndarray]], None], exposure: Exposure,
            rng: np.random.Generator, noise: np.ndarray | None = None,
            gains: tuple[np.ndarray, np.ndarray] | None = None
            ) -> np.ndarray:
    """Finish a frame: surface planes at (s, d) (for rows from view.row0 down), `paint(planes)` draws defects on
    them, then shadows, haze and sky (the backdrop's weight/add), exposure and sensor noise (`noise`, a
    unit-sigma HxW field, or fresh); returns uint8 BGR."""
    r0 = view.row0
    low = shade_surface(style, s, d, view.inv_fp_across[r0:], view.inv_fp_along[r0:], gains)
    planes = []
    for plane in low:
        full = np.zeros((view.height, view.width), np.float32)
        full[r0:] = plane
        planes.append(full)
    paint(planes)
    w = weight
    shadow = shadow_factor(style, s, d)
    if shadow is not None:
        w = w.copy()
        w[r0:] *= shadow
    if exposure.noise_sigma > 0:
        if noise is None:
            noise = rng.standard_normal(w.shape, dtype=np.float32)
        noise = noise * np.float32(exposure.noise_sigma)
    out = []
    for plane, extra in zip(planes, add, strict=True):
        plane *= w
        plane += extra
        if noise is not None:
            plane += noise
        out.append(cv2.convertScaleAbs(plane, alpha=exposure.gain))
    frame = cv2.merge(out)
    lut = exposure.lut()
    return frame if lut is None else cv2.LUT(frame, lut)


def random_camera(rng: np.random.Generator, width: int, height: int) -> GroundProjector:
    """A dash/roof camera within realistic limits: 55-95 deg horizontal FOV, 1.1-2.4 m high, 5-30 deg down."""
    intr = Intrinsics.from_hfov(width, height, rng.uniform(55, 95))
    intr = Intrinsics(intr.fx, intr.fx * rng.uniform(0.98, 1.02), intr.cx + rng.normal(0, 0.02) * width,
                      intr.cy + rng.normal(0, 0.02) * height, width, height)
    mount = Mount(height_m=float(rng.uniform(1.1, 2.4)), pitch_deg=float(rng.uniform(5, 30)),
                  roll_deg=float(rng.normal(0, 1.5)), yaw_deg=float(rng.normal(0, 3)),
                  lateral_m=float(rng.uniform(-0.4, 0.4)))
    return GroundProjector(intr, mount)


def _place_potholes(rng: np.random.Generator, view: CameraView, style: RoadStyle, d_of, count: int
                    ) -> list[tuple[float, float, float]]:
    """(forward, left, diameter) for up to `count` potholes on the asphalt, spread over the visible road, big
    enough in the image to be labelled, not overlapping."""
    placed: list[tuple[float, float, float]] = []
    rows = np.flatnonzero(view.ground_mask.any(axis=1))
    if len(rows) == 0:
        return placed
    top = rows[0] + 0.1 * (view.height - rows[0])
    for _ in range(count * 12):
        if len(placed) == count:
            break
        diameter = float(rng.uniform(0.3, 1.2))
        u = rng.uniform(0, view.width - 1)
        # More of them near than far: far ones are thin slivers, and the agent judges defects up close anyway.
        v = top + (view.height - 1 - top) * math.sqrt(rng.random())
        if not view.ground_mask[int(v), int(u)]:
            continue
        f, left = float(view.forward[int(v), int(u)]), float(view.left[int(v), int(u)])
        d = d_of(f, left)
        if abs(d) > style.road_half_width - diameter / 2 or not style.clear_of_markings(d, diameter / 2):
            continue
        if view.projector.intrinsics.fx * diameter / math.hypot(f, view.projector.mount.height_m) < 9:
            continue
        if any(math.hypot(f - f2, left - l2) < (diameter + d2) * 0.75 for f2, l2, d2 in placed):
            continue
        placed.append((f, left, diameter))
    return placed


def random_training_scene(rng: np.random.Generator, width: int, height: int, box_cracks: bool = False
                          ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A random road view as the drive simulator renders it, with 0-4 potholes (boxed, class "pothole") and
    some cracks: boxed as class "crack" with box_cracks, else unboxed distractors for a pothole-only model.
    Returns (image_bgr uint8 HxWx3, boxes_xyxy float32 Nx4, class_names)."""
    view = CameraView(random_camera(rng, width, height))
    style = random_style(rng)
    # The road relative to the vehicle: lateral place in the lane, a small heading error, maybe a curve.
    d_vehicle = float(style.ego_lane_centre + rng.normal(0, 0.5))
    psi = float(rng.normal(0, 0.03))
    kappa = rng.uniform(-1 / 60, 1 / 60) if rng.random() < 0.4 else 0.0
    s0 = rng.uniform(0, 100)

    def d_of(f, left):
        return d_vehicle + left - psi * f - 0.5 * kappa * f * f

    s = view.forward[view.row0:] + s0
    d = d_of(view.forward[view.row0:], view.left[view.row0:])
    potholes = _place_potholes(rng, view, style, d_of, int(rng.integers(0, 5)))
    sprite_px = 64 if max(width, height) <= 400 else 128
    sprites = [pothole_sprite(rng, dia, sprite_px) for _, _, dia in potholes]
    cracks = []
    for _ in range(int(rng.integers(0, 4))):
        crack = random_crack(rng)
        # Far away a crack net would melt into a dark blob that looks like an unlabelled pothole: keep its cells
        # (or a lone crack's bends) at least 7 pixels apart.
        max_f = min(25.0, view.projector.intrinsics.fx * crack.cell_m / 7.0)
        if max_f <= 2.0:
            continue
        f = float(rng.uniform(2, max_f))
        left = float(-d_vehicle + rng.uniform(-style.road_half_width, style.road_half_width))
        cracks.append((crack, f, left, float(rng.uniform(0, math.pi))))
    patches = []
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 3))):
            patches.append((float(rng.uniform(3, 30)),
                            float(-d_vehicle + rng.uniform(-style.road_half_width, style.road_half_width) * 0.7),
                            float(rng.normal(0, 0.05)), float(rng.uniform(0.8, 3.5)), float(rng.uniform(1.0, 6.0)),
                            float(rng.choice([rng.uniform(0.72, 0.9), rng.uniform(1.08, 1.2)]))))
    boxes: list[tuple[float, float, float, float]] = []
    names: list[str] = []

    def paint(img: list[np.ndarray]) -> None:
        for patch in patches:
            paint_patch(img, view.homography, *patch)
        for crack, f, left, yaw in cracks:
            box = paint_crack(img, crack, view.homography, f, left, yaw)
            # A crack running along the image edge clips to a box of no height: not a box to learn or score.
            if box_cracks and box is not None and max(box[2] - box[0], box[3] - box[1]) >= 4 * MIN_BOX_PX \
                    and min(box[2] - box[0], box[3] - box[1]) >= 1.0:
                boxes.append(box)
                names.append(CRACK)
        for (f, left, _), sprite in zip(potholes, sprites, strict=True):
            box = paint_sprite(img, sprite, view.homography, f, left, float(rng.uniform(-0.3, 0.3)), MIN_BOX_PX)
            if box is not None:
                boxes.append(box)
                names.append(POTHOLE)

    weight, add = backdrop(view, style, _sky(view, style, rng))
    exposure = Exposure(float(rng.uniform(0.65, 1.35)), float(rng.uniform(0.8, 1.25)), float(rng.uniform(1, 6)))
    frame = compose(view, style, s, d, weight, add, paint, exposure, rng)
    if rng.random() < 0.3:  # motion / focus blur
        frame = cv2.GaussianBlur(frame, (0, 0), rng.uniform(0.5, 1.2))
    return frame, np.array(boxes, np.float32).reshape(-1, 4), names


DRIVE_RANGE_M = 90.0
_GRID_STEP_M = 0.25


@dataclass
class PaintedDefect:
    """One defect to draw: its sprite (pothole) or crack, where it lies on the road and how it is turned."""

    index: int
    east: float
    north: float
    yaw: float                      # orientation, radians from east
    sprite: Sprite | None = None    # potholes
    crack: Crack | None = None      # cracks


class DriveRenderer:
    """Frames of one drive: a fixed camera and road style, the vehicle's pose changing per frame.

    Road coordinates per pixel come from the centre line ahead expressed in the vehicle frame and tabulated
    over forward distance; each pixel's fixed forward distance indexes that table (one cv2.remap), so a frame
    costs a few vector operations whatever the route's shape.
    """

    def __init__(self, projector: GroundProjector, style: RoadStyle, route: Route, rng: np.random.Generator,
                 exposure: Exposure) -> None:
        self.view = CameraView(projector, DRIVE_RANGE_M)
        self.style = style
        self.route = route
        self.exposure = exposure
        self.weight, self.add = backdrop(self.view, style, _sky(self.view, style, rng))
        self.grid_f = np.arange(0.0, DRIVE_RANGE_M + 2 * _GRID_STEP_M, _GRID_STEP_M)
        r0 = self.view.row0
        self.map_x = (self.view.forward[r0:] / np.float32(_GRID_STEP_M)).astype(np.float32)
        self.map_y = np.zeros_like(self.map_x)
        self.left = self.view.left[r0:]
        self.gains = texture_gains(style, self.view.inv_fp_along[r0:])
        # Sensor noise from a small bank of fields: drawing 230k normals per frame would cost more than the road.
        self.noise_bank = [rng.standard_normal(self.view.forward.shape, dtype=np.float32) for _ in range(6)]

    def road_coordinates(self, east: float, north: float, heading: float, s_vehicle: float
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(s, d) per pixel (rows from view.row0 down) for the vehicle at (east, north) heading `heading`
        (radians from east)."""
        ss = np.arange(s_vehicle - 5.0, s_vehicle + DRIVE_RANGE_M * 1.3 + 10.0, 0.5)
        e, n, th = self.route.at(ss)
        ch, sh = math.cos(heading), math.sin(heading)
        dx, dy = e - east, n - north
        f = dx * ch + dy * sh
        left = -dx * sh + dy * ch
        phi = th - heading
        # Past a hairpin the centre line would fold back; keep the part where forward distance still grows.
        bad = np.flatnonzero(np.diff(f) <= 1e-3)
        end = bad[0] + 1 if len(bad) else len(f)
        f, left, phi, ss = f[:end], left[:end], phi[:end], ss[:end]
        c = np.interp(self.grid_f, f, left)
        cos_t = np.interp(self.grid_f, f, np.cos(phi))
        sin_t = np.interp(self.grid_f, f, np.sin(phi))
        s_rel = np.interp(self.grid_f, f, ss - s_vehicle)
        beyond = self.grid_f > f[-1]
        s_rel[beyond] += self.grid_f[beyond] - f[-1]
        table = np.stack([c, cos_t, sin_t, s_rel], axis=-1).astype(np.float32)[None]
        per_px = cv2.remap(table, self.map_x, self.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        delta = self.left - per_px[..., 0]
        d = delta * per_px[..., 1]
        s = per_px[..., 3] + delta * per_px[..., 2] + np.float32(s_vehicle)
        return s, d

    def render(self, east: float, north: float, heading: float, s_vehicle: float, defects: list[PaintedDefect],
               rng: np.random.Generator) -> tuple[np.ndarray, dict[int, tuple[float, float, float, float]]]:
        """The frame (uint8 BGR) and the image boxes of the defects drawn in it (potholes, and cracks big enough to
        tell from a mark), by defect index."""
        s, d = self.road_coordinates(east, north, heading, s_vehicle)
        ch, sh = math.cos(heading), math.sin(heading)
        boxes: dict[int, tuple[float, float, float, float]] = {}
        hom = self.view.homography

        def paint(img: list[np.ndarray]) -> None:
            for defect in defects:
                dx, dy = defect.east - east, defect.north - north
                f = dx * ch + dy * sh
                left = -dx * sh + dy * ch
                if not 0.5 < f < DRIVE_RANGE_M or abs(left) > 30:
                    continue
                yaw = defect.yaw - heading
                if defect.crack is not None:
                    box = paint_crack(img, defect.crack, hom, f, left, yaw)
                    if box is not None and max(box[2] - box[0], box[3] - box[1]) >= 4 * MIN_BOX_PX:
                        boxes[defect.index] = box
                elif defect.sprite is not None:
                    box = paint_sprite(img, defect.sprite, hom, f, left, yaw)
                    if box is not None:
                        boxes[defect.index] = box

        noise = self.noise_bank[int(rng.integers(len(self.noise_bank)))]
        frame = compose(self.view, self.style, s, d, self.weight, self.add, paint, self.exposure, rng, noise,
                        self.gains)
        return frame, boxes
