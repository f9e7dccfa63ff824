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
from edge_agent.sim.paint import paint_crack, paint_sprite, pothole_sprite, random_crack
from edge_agent.sim.surface import RoadStyle, random_style, shade_surface, shadow_factor

MAX_RENDER_RANGE_M = 120.0
POTHOLE = "pothole"


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
        self.homography = projector.ground_homography()
        self.horizon_v = projector.horizon_v()
        self.width, self.height = w, h


def _sky(view: CameraView, style: RoadStyle, rng: np.random.Generator) -> np.ndarray:
    """Sky gradient with a ragged band of distant trees/buildings standing on the horizon."""
    h, w = view.height, view.width
    rows = np.arange(h, dtype=np.float32)[:, None]
    t = np.clip((view.horizon_v - rows) / max(h, 1), 0, 1)[..., None]
    top = np.array([rng.uniform(200, 250), rng.uniform(170, 220), rng.uniform(130, 200)], np.float32)
    sky_rows = style.haze_bgr * (1 - t) + top * t                      # Hx1x3
    profile = cv2.GaussianBlur(rng.random((1, w)).astype(np.float32), (0, 0), rng.uniform(2, 12)).ravel()
    profile = (profile - profile.min()) / (np.ptp(profile) + 1e-6) * rng.uniform(0.03, 0.2) * h
    clutter_col = np.array([rng.uniform(40, 110), rng.uniform(60, 120), rng.uniform(40, 110)], np.float32)
    above = ((view.horizon_v - rows) < profile[None, :])[..., None]
    return np.where(above, clutter_col, sky_rows).astype(np.float32)


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


def backdrop(view: CameraView, style: RoadStyle, sky: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What does not depend on the road texture: per pixel, surface weight (1 - haze, 0 for sky) and the
    additive haze/sky colour. A frame is surface * weight + add."""
    haze = 1.0 - np.exp(-view.forward / np.float32(style.haze_range_m))
    weight = np.where(view.ground_mask, 1.0 - haze, 0.0).astype(np.float32)
    add = np.where(view.ground_mask[..., None], haze[..., None] * style.haze_bgr, sky).astype(np.float32)
    return weight, add


def compose(view: CameraView, style: RoadStyle, s: np.ndarray, d: np.ndarray, weight: np.ndarray,
            add: np.ndarray, paint: Callable[[np.ndarray], None], exposure: Exposure,
            rng: np.random.Generator) -> np.ndarray:
    """Finish a frame: surface at (s, d), `paint(img)` draws defects on it, then shadows, haze and sky (the
    backdrop's weight/add), exposure and sensor noise; returns uint8 BGR."""
    img = shade_surface(style, s, d, view.inv_fp_across, view.inv_fp_along)
    paint(img)
    w = weight
    shadow = shadow_factor(style, s, d)
    if shadow is not None:
        w = w * shadow
    if exposure.noise_sigma > 0:
        noise = rng.standard_normal(w.shape, dtype=np.float32) * np.float32(exposure.noise_sigma)
        img = img * w[..., None] + (add + noise[..., None])
    else:
        img = img * w[..., None] + add
    out = cv2.convertScaleAbs(img, alpha=exposure.gain)
    lut = exposure.lut()
    return out if lut is None else cv2.LUT(out, lut)


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
        v = rng.uniform(top, view.height - 1)
        if not view.ground_mask[int(v), int(u)]:
            continue
        f, left = float(view.forward[int(v), int(u)]), float(view.left[int(v), int(u)])
        if abs(d_of(f, left)) > style.road_half_width - diameter / 2:
            continue
        if view.projector.intrinsics.fx * diameter / math.hypot(f, view.projector.mount.height_m) < 9:
            continue
        if any(math.hypot(f - f2, left - l2) < (diameter + d2) * 0.75 for f2, l2, d2 in placed):
            continue
        placed.append((f, left, diameter))
    return placed


def random_training_scene(rng: np.random.Generator, width: int, height: int
                          ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A random road view as the drive simulator renders it, with 0-4 potholes (boxed, class "pothole") and
    some cracks (unboxed distractors). Returns (image_bgr uint8 HxWx3, boxes_xyxy float32 Nx4, class_names)."""
    view = CameraView(random_camera(rng, width, height))
    style = random_style(rng)
    # The road relative to the vehicle: lateral place in the lane, a small heading error, maybe a curve.
    d_vehicle = float(style.ego_lane_centre + rng.normal(0, 0.5))
    psi = float(rng.normal(0, 0.03))
    kappa = rng.uniform(-1 / 60, 1 / 60) if rng.random() < 0.4 else 0.0
    s0 = rng.uniform(0, 100)

    def d_of(f, left):
        return d_vehicle + left - psi * f - 0.5 * kappa * f * f

    s = view.forward + s0
    d = d_of(view.forward, view.left)
    potholes = _place_potholes(rng, view, style, d_of, int(rng.integers(0, 5)))
    sprites = [pothole_sprite(rng, dia) for _, _, dia in potholes]
    cracks = []
    for _ in range(int(rng.integers(0, 4))):
        crack = random_crack(rng)
        # Far away a crack net would melt into a dark blob that looks like an unlabelled pothole: keep its cells
        # (or a lone crack's bends) at least a few pixels apart.
        max_f = min(25.0, view.projector.intrinsics.fx * crack.cell_m / 3.0)
        if max_f <= 2.0:
            continue
        f = float(rng.uniform(2, max_f))
        left = float(-d_vehicle + rng.uniform(-style.road_half_width, style.road_half_width))
        cracks.append((crack, f, left, float(rng.uniform(0, math.pi))))
    boxes: list[tuple[float, float, float, float]] = []

    def paint(img: np.ndarray) -> None:
        for crack, f, left, yaw in cracks:
            paint_crack(img, crack, view.homography, f, left, yaw)
        for (f, left, _), sprite in zip(potholes, sprites, strict=True):
            box = paint_sprite(img, sprite, view.homography, f, left, float(rng.uniform(-0.3, 0.3)))
            if box is not None and box[2] - box[0] >= 3 and box[3] - box[1] >= 3:
                boxes.append(box)

    weight, add = backdrop(view, style, _sky(view, style, rng))
    exposure = Exposure(float(rng.uniform(0.65, 1.35)), float(rng.uniform(0.8, 1.25)), float(rng.uniform(1, 6)))
    frame = compose(view, style, s, d, weight, add, paint, exposure, rng)
    if rng.random() < 0.3:  # motion / focus blur
        frame = cv2.GaussianBlur(frame, (0, 0), rng.uniform(0.5, 1.2))
    box_arr = np.array(boxes, np.float32).reshape(-1, 4)
    return frame, box_arr, [POTHOLE] * len(box_arr)
