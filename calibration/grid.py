"""A projected metre grid over a camera image: if the mount is right, the lines lie flat on the road."""

from __future__ import annotations

import cv2
import numpy as np

from calibration.projector import GroundProjector

LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_SCALE = 0.4  # per unit of line thickness (1 px per 640 px of width)


def _polyline(projector: GroundProjector, ground: np.ndarray) -> np.ndarray | None:
    uv = projector.ground_to_pixels(ground)
    ok = np.isfinite(uv).all(axis=1)
    if ok.sum() < 2:
        return None
    return np.round(uv[ok] * 16).astype(np.int32)


def draw_ground_grid(image: np.ndarray, projector: GroundProjector, max_forward_m: float = 30.0,
                     half_width_m: float = 5.0, step_m: float = 1.0) -> np.ndarray:
    """A copy of `image` with lines every `step_m` across and along the road (forward from the first visible
    metre to `max_forward_m`, left/right to `half_width_m`), labelled every 5 m forward (see `grid_labels`)."""
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
    majors = []
    for f in forwards:
        major = abs(f / 5 - round(f / 5)) < 1e-6
        line = _polyline(projector, np.column_stack([np.full_like(dense_l, f), dense_l]))
        if line is None:
            continue
        cv2.polylines(out, [line], False, (0, 0, 255) if major else (0, 160, 0), thick, cv2.LINE_AA, shift=4)
        if major:
            majors.append(float(f))
    for text, (x, y) in grid_labels(projector, majors, half_width_m, thick):
        cv2.putText(out, text, (x, y), LABEL_FONT, LABEL_SCALE * thick, (0, 0, 255), thick, cv2.LINE_AA)
    return out


def _visible_ends(projector: GroundProjector, forward_m: float,
                  half_width_m: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The leftmost and rightmost pixels of the cross line FORWARD_M ahead that lie inside the image."""
    lefts = np.linspace(-half_width_m, half_width_m, 200)
    uv = projector.ground_to_pixels(np.column_stack([np.full_like(lefts, forward_m), lefts]))
    ok = np.isfinite(uv).all(axis=1)
    ok[ok] = [projector.in_image(u, v) for u, v in uv[ok]]
    if not ok.any():
        return None
    pts = uv[ok]
    return pts[np.argmin(pts[:, 0])], pts[np.argmax(pts[:, 0])]


def grid_labels(projector: GroundProjector, forwards_m: list[float], half_width_m: float,
                thick: int = 1) -> list[tuple[str, tuple[int, int]]]:
    """Where the "N m" labels of the cross lines FORWARDS_M go (text, bottom-left corner): beside the line's left
    end, else, when that would overlap the previous label (far lines crowd towards the horizon), beside its
    right end; a line with no room on either side goes unlabelled. The ends are those inside the image, not
    the grid's: near lines run out of the picture at the sides, and a label at their off-screen end was never
    drawn (the 5 m line had none)."""
    (_, text_h), _ = cv2.getTextSize("0 m", LABEL_FONT, LABEL_SCALE * thick, thick)
    gap = text_h + 2 * thick  # digits and "m" have no descenders: closer than this, two labels touch
    last_v = {"left": np.inf, "right": np.inf}
    labels = []
    for f in forwards_m:
        ends = _visible_ends(projector, f, half_width_m)
        if ends is None:
            continue
        text = f"{f:.0f} m"
        (text_w, _), _ = cv2.getTextSize(text, LABEL_FONT, LABEL_SCALE * thick, thick)
        for side, (u, v) in zip(("left", "right"), ends, strict=True):
            if last_v[side] - v < gap:
                continue
            last_v[side] = v
            labels.append((text, (_label_x(side, u, text_w, projector.intrinsics.width),
                                  max(int(v) + text_h // 2, text_h))))
            break
    return labels


def _label_x(side: str, u: float, text_w: int, width: int) -> int:
    """Beyond the line's end, where the grid leaves the road bare; inside it when the end is the image edge."""
    if side == "left":
        x = int(u) - 3 - text_w
        return x if x >= 0 else int(u) + 3
    x = int(u) + 3
    return x if x + text_w < width else int(u) - 3 - text_w
