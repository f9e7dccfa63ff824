"""Is a checkerboard calibration trustworthy? A low RMS is not enough: an outside installer test fitted 6
photos of a board facing the camera to fx 1108 px (true 900) at RMS 0.30 px, and 10 tilted photos that kept
away from the image's corners to a distortion polynomial that folds back before the corner, at RMS 0.28 px.
Both went on to place potholes metres off. These checks look at what the photos could pin down.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from calibration.camera import Intrinsics

MIN_TILT_DEG = 15.0  # the board tilt a set of photos needs for the focal length to be told from distance
MIN_TILTED = 2  # photos at that tilt at least (and a fifth of them)
RMS_GOOD_PX = 0.5
RMS_BAD_PX = 1.0
CORNERS = {(0, 0): "top-left", (2, 0): "top-right", (0, 2): "bottom-left", (2, 2): "bottom-right"}


def calibration_problems(intr: Intrinsics, image_points: list[np.ndarray], rvecs: list[np.ndarray],
                         rms_px: float) -> list[str]:
    """What is wrong with a calibration from these views, in words (empty when nothing is)."""
    problems = []
    if rms_px > RMS_BAD_PX:
        problems.append(f"RMS reprojection error {rms_px:.2f} px (above {RMS_BAD_PX:g} px): blurred photos, or a "
                        "wrong --board count; retake or drop the worst images")
    elif rms_px > RMS_GOOD_PX:
        problems.append(f"RMS reprojection error {rms_px:.2f} px (good is below {RMS_GOOD_PX:g} px): drop the worst "
                        "images or retake them sharper")
    empty = uncovered_corners(intr, image_points)
    if empty:
        problems.append(f"(almost) no board corner in the image's {', '.join(empty)} "
                        f"ninth{'s' if len(empty) > 1 else ''}: "
                        "the lens distortion is not measured where potholes pass the frame's lower corners; add "
                        "photos with the board there")
    tilt = max_tilt_deg(rvecs)
    if tilt < MIN_TILT_DEG:
        problems.append(f"too few photos show the board tilted (a fifth of them reach {tilt:.0f} deg): the focal "
                        "length cannot be told apart from the board's distance; add photos with the board tilted "
                        "30-45 deg")
    fold = distortion_folds(intr)
    if fold:
        problems.append(fold)
    return problems


def uncovered_corners(intr: Intrinsics, image_points: list[np.ndarray]) -> list[str]:
    """The corner ninths of the image (3 x 3 grid) holding fewer than a quarter of one board's corners over all
    photos (one corner grazing each ninth silenced a re-test's check on a lens 36-47 px off there)."""
    pts = np.concatenate([p.reshape(-1, 2) for p in image_points]) if image_points else np.zeros((0, 2))
    need = max(4, len(image_points[0].reshape(-1, 2)) // 4) if image_points else 1
    cells = [(min(int(3 * u / intr.width), 2), min(int(3 * v / intr.height), 2)) for u, v in pts]
    return [name for cell, name in CORNERS.items() if cells.count(cell) < need]


def max_tilt_deg(rvecs: list[np.ndarray]) -> float:
    """The tilt (angle between a board's normal and the optical axis) that MIN_TILTED of the views reach: one
    photo tilted 16° among face-on ones silenced a re-test's check on a focal length 4 % off."""
    tilts = sorted((math.degrees(math.acos(min(1.0, abs(float(cv2.Rodrigues(np.asarray(r, np.float64))[0][2, 2])))))
                    for r in rvecs), reverse=True)
    if not tilts:
        return 0.0
    return tilts[min(len(tilts), max(MIN_TILTED, math.ceil(0.2 * len(tilts)))) - 1]


def distortion_folds(intr: Intrinsics) -> str | None:
    """Why the fitted radial distortion cannot be right out to the image's corners (it stops growing before it
    reaches them, so two rays would land on one pixel), or None."""
    k = list(intr.dist) + [0.0] * 5
    k1, k2, k3 = k[0], k[1], k[4]
    corner = max(math.hypot((u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy)
                 for u in (0, intr.width) for v in (0, intr.height))
    r = np.linspace(0.0, 3.0, 3001)
    r2 = r * r
    d = r * (1 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2)
    reach = np.nonzero(d >= corner)[0]
    end = int(reach[0]) if len(reach) else len(r) - 1
    if len(reach) and np.all(np.diff(d[: end + 1]) > 0):
        return None
    return (f"the fitted lens distortion (k1 {k1:.3f}, k2 {k2:.3f}, k3 {k3:.3f}) folds back before the image's "
            "corners: positions there would be wrong; add photos with the board in the corners")
