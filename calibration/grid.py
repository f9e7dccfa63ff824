"""A projected metre grid over a camera image: if the mount is right, the lines lie flat on the road."""

from __future__ import annotations

import cv2
import numpy as np

from calibration.projector import GroundProjector


def _polyline(projector: GroundProjector, ground: np.ndarray) -> np.ndarray | None:
    uv = projector.ground_to_pixels(ground)
    ok = np.isfinite(uv).all(axis=1)
    if ok.sum() < 2:
        return None
    return np.round(uv[ok] * 16).astype(np.int32)


def draw_ground_grid(image: np.ndarray, projector: GroundProjector, max_forward_m: float = 30.0,
                     half_width_m: float = 5.0, step_m: float = 1.0) -> np.ndarray:
    """A copy of `image` with lines every `step_m` across and along the road (forward from the first visible
    metre to `max_forward_m`, left/right to `half_width_m`), labelled every 5 m forward."""
    out = image.copy()
    h, w = out.shape[:2]
    if (w, h) != (projector.intrinsics.width, projector.intrinsics.height):
        projector = GroundProjector(projector.intrinsics.scaled(w, h), projector.mount)
    thick = max(1, round(w / 640))
    near = max(step_m, 0.5)
    lefts = np.arange(-half_width_m, half_width_m + 1e-6, step_m)
    forwards = np.arange(near, max_forward_m + 1e-6, step_m)
    dense_f = np.linspace(near, max_forward_m, 200)
    dense_l = np.linspace(-half_width_m, half_width_m, 100)
    for left in lefts:
        colour = (0, 255, 255) if abs(left) < 1e-6 else (0, 200, 0)
        line = _polyline(projector, np.column_stack([dense_f, np.full_like(dense_f, left)]))
        if line is not None:
            cv2.polylines(out, [line], False, colour, thick, cv2.LINE_AA, shift=4)
    last_label_v = np.inf
    for f in forwards:
        major = abs(f / 5 - round(f / 5)) < 1e-6
        line = _polyline(projector, np.column_stack([np.full_like(dense_l, f), dense_l]))
        if line is None:
            continue
        cv2.polylines(out, [line], False, (0, 0, 255) if major else (0, 160, 0), thick, cv2.LINE_AA, shift=4)
        if major:
            pix = projector.ground_to_pixel(f, -half_width_m)
            # Far labels crowd towards the horizon: keep those at least a text line apart.
            if pix is not None and projector.in_image(*pix) and last_label_v - pix[1] >= 14 * thick:
                last_label_v = pix[1]
                cv2.putText(out, f"{f:.0f} m", (int(pix[0]) + 3, int(pix[1]) - 3), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4 * thick, (0, 0, 255), thick, cv2.LINE_AA)
    return out
