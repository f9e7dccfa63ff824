"""Defects drawn on the road in perspective: potholes (the boxes the detector learns) and cracks (distractors).

A pothole is a small top-down sprite in ground metres: an irregular dark hollow with a lighter broken rim and
gravel inside. It is stored as a multiplicative shading (factor - 1) times alpha, so the road's own texture,
exposure and shadows show through it, and it is warped into the frame with the ground->image homography.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

_SPRITE_PX = 64
_BOX_ALPHA = 0.35          # alpha above which a warped sprite pixel counts for the pothole's box
MIN_FORWARD_M = 0.3        # sprites this close (or behind) are not drawn: the homography degenerates


@dataclass
class Sprite:
    """Top-down pothole: `shade` HxWx3 = alpha * (factor - 1), `alpha` HxW; pixel (col, row) lies at
    (col - c, c - row) * metres_per_px to the (right, forward) of the sprite centre, c = (size - 1) / 2."""

    shade: np.ndarray
    alpha: np.ndarray
    metres_per_px: float
    width_m: float      # across the road
    length_m: float     # along the road

    @property
    def size_px(self) -> int:
        return self.alpha.shape[0]


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _noise(rng: np.random.Generator, n: int, blur: float) -> np.ndarray:
    z = cv2.GaussianBlur(rng.standard_normal((n, n)).astype(np.float32), (0, 0), blur)
    return z / (z.std() + 1e-6)


POTHOLE_KINDS = ("dark", "gravel", "muddy")
_KIND_P = (0.6, 0.25, 0.15)


def pothole_sprite(rng: np.random.Generator, diameter_m: float, size_px: int = _SPRITE_PX,
                   kind: str | None = None) -> Sprite:
    """An irregular pothole about `diameter_m` across (its longer side) with a lighter broken rim, drawn on a
    size_px square (64 is plenty for small training images; a drive seen at 640+ px close up wants ~128).

    kind: "dark" (a dark hollow with gravel, sometimes a dark puddle), "gravel" (dry, dusty, coarse, only a
    little darker than the road), "muddy" (brown water reflecting the sky), or None for a random one.
    """
    kind = kind or str(rng.choice(POTHOLE_KINDS, p=_KIND_P))
    n = size_px
    scale = n / _SPRITE_PX  # blur radii below are tuned for 64 px
    aspect = rng.uniform(0.55, 1.0)                 # potholes are usually elongated
    radius = diameter_m / 2
    extent = radius * 1.35                          # room for the rim
    mpp = 2 * extent / (n - 1)
    c = (n - 1) / 2
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    x, y = (xx - c) * mpp, (c - yy) * mpp
    rot = rng.uniform(0, math.pi)
    xr = (x * math.cos(rot) + y * math.sin(rot)) / radius
    yr = (-x * math.sin(rot) + y * math.cos(rot)) / (radius * aspect)
    r = np.hypot(xr, yr)
    theta = np.arctan2(yr, xr)
    wobble = np.ones_like(r)
    for harmonic in range(2, 8):
        wobble += rng.uniform(0, 0.28 / harmonic) * np.cos(harmonic * theta + rng.uniform(0, 2 * math.pi))
    rho = r / wobble + 0.12 * _noise(rng, n, 2.5 * scale)   # <1 inside; the noise frays the outline

    inside = _smoothstep(1.0 + 0.06, 1.0 - 0.06, rho)
    rim_w = rng.uniform(0.12, 0.3)
    rim_noise = _noise(rng, n, 1.2 * scale)
    rim = _smoothstep(1.0 + rim_w, 1.0, rho) * (1 - inside) * np.clip(0.6 + 0.5 * rim_noise, 0, 1)

    # The hollow's walls: darker on the side away from the light, lighter on the lit side.
    light_dir = rng.uniform(0, 2 * math.pi)
    side = (xr * math.cos(light_dir) + yr * math.sin(light_dir)) / np.maximum(wobble, 1e-3)
    depth_shade = 1.0 + 0.3 * side * np.clip(1.2 - rho, 0, 1)
    fine = _noise(rng, n, 0.6)
    coarse = _noise(rng, n, 1.5 * scale)
    stones = (rng.random((n, n)) < 0.04 / scale).astype(np.float32)
    tint = np.zeros(3, np.float32)                  # per-channel (B, G, R) factor offsets inside
    if kind == "gravel":
        level = rng.uniform(0.5, 0.75)
        factor_in = level * depth_shade * (1 + 0.18 * fine + 0.25 * coarse) + stones * rng.uniform(0.3, 0.7)
        tint = np.array([-0.05, -0.01, 0.04], np.float32) * rng.uniform(0.5, 1.5)
    elif kind == "muddy":
        # Brown water: smooth, the far half catching the sky's light, a dark gravel ring at the water line.
        level = rng.uniform(0.5, 0.85)
        sky = np.clip(0.5 + 0.5 * yr / np.maximum(wobble, 1e-3), 0, 1)
        factor_in = level * (1 + rng.uniform(0.05, 0.25) * sky) + 0.03 * _noise(rng, n, 3 * scale)
        factor_in -= 0.25 * _smoothstep(0.75, 0.95, rho) * level
        tint = np.array([-0.18, -0.06, 0.05], np.float32) * rng.uniform(0.5, 1.2)
    else:
        level = rng.uniform(0.3, 0.62)
        factor_in = level * depth_shade * (1 + 0.12 * fine + 0.1 * coarse) + stones * rng.uniform(0.2, 0.6) * level
        if rng.random() < 0.15:  # standing water: smoother, darker
            factor_in = np.full_like(factor_in, level * 0.8) + 0.03 * _noise(rng, n, 3 * scale)
    rim_gain = rng.uniform(0.2, 0.55)
    factor_rim = 1.0 + rim_gain * (1 + 0.3 * rim_noise)
    # Loose chippings thrown out around the hole: light specks, too faint to widen the labelled box.
    debris = ((rng.random((n, n)) < 0.02 / scale) & (rho > 1.0) & (rho < 1.5)).astype(np.float32) * 0.3

    alpha = np.clip(inside + rim, 0.0, 1.0)
    shade = (inside * (factor_in - 1) + rim * (factor_rim - 1)).astype(np.float32)
    shade3 = np.repeat(shade[..., None], 3, axis=2) + (inside[..., None] * tint)
    shade3 += (debris * rng.uniform(0.3, 0.8))[..., None]
    alpha = np.maximum(alpha, debris)
    width = 2 * radius * max(abs(math.cos(rot)), aspect * abs(math.sin(rot)))
    length = 2 * radius * max(abs(math.sin(rot)), aspect * abs(math.cos(rot)))
    return Sprite(shade3.astype(np.float32), alpha.astype(np.float32), mpp, float(width), float(length))


def sprite_to_ground(sprite: Sprite, forward_m: float, left_m: float, yaw_rad: float = 0.0) -> np.ndarray:
    """3x3 affine: sprite pixel (col, row, 1) -> ground (forward, left, 1) for a sprite centred at
    (forward_m, left_m) whose 'forward' axis is turned `yaw_rad` to the left of the vehicle's."""
    c = (sprite.size_px - 1) / 2
    m = sprite.metres_per_px
    cy, sy = math.cos(yaw_rad), math.sin(yaw_rad)
    # sprite right = (col - c) * m, sprite forward = (c - row) * m; right is -left.
    a = np.array([[0.0, -m, c * m], [-m, 0.0, c * m], [0.0, 0.0, 1.0]])  # -> (fwd, left) unrotated
    rot = np.array([[cy, -sy, forward_m], [sy, cy, left_m], [0, 0, 1.0]])
    return rot @ a


def paint_sprite(planes: list[np.ndarray], sprite: Sprite, ground_h: np.ndarray, forward_m: float, left_m: float,
                 yaw_rad: float = 0.0, min_box_px: float = 0.0) -> tuple[float, float, float, float] | None:
    """Darken/lighten the float colour planes (B, G, R) in place with the sprite at the ground position;
    returns its tight image box (x1, y1, x2, y2) clipped to the image, or None when nothing of it is visible.
    With `min_box_px`, a sprite whose box would be narrower or lower than that is not painted at all (a
    training image must not hold a pothole without its label)."""
    h_img, w_img = planes[0].shape[:2]
    a = sprite_to_ground(sprite, forward_m, left_m, yaw_rad)
    n = sprite.size_px
    corners_ground = a @ np.array([[0, 0, 1], [n - 1, 0, 1], [n - 1, n - 1, 1], [0, n - 1, 1]], float).T
    if np.any(corners_ground[0] < MIN_FORWARD_M):
        return None
    h = ground_h @ a
    proj = h @ np.array([[0, 0, 1], [n, 0, 1], [n, n, 1], [0, n, 1]], float).T
    if np.any(proj[2] <= 1e-9):
        return None
    uv = proj[:2] / proj[2]
    x0, y0 = np.floor(uv.min(axis=1)).astype(int)
    x1, y1 = np.ceil(uv.max(axis=1)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w_img), min(y1, h_img)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    shade, alpha = sprite.shade, sprite.alpha
    px_per_sprite_px = math.sqrt(abs(np.linalg.det(h[:2, :2] / proj[2].mean())))
    if px_per_sprite_px < 0.5:  # shrink first so warping does not alias away the dark hollow
        k = max(4, int(n * px_per_sprite_px * 2))
        shade = cv2.resize(shade, (k, k), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, (k, k), interpolation=cv2.INTER_AREA)
        scale = np.diag([n / k, n / k, 1.0])
        h = h @ scale
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]])
    hh = shift @ h
    size = (x1 - x0, y1 - y0)
    w_shade: np.ndarray = cv2.warpPerspective(shade, hh, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    w_alpha = cv2.warpPerspective(alpha, hh, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    ys, xs = np.nonzero(w_alpha > _BOX_ALPHA)
    if len(xs) == 0:
        box = None
    else:
        box = float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1)
    if min_box_px > 0 and (box is None or min(box[2] - box[0], box[3] - box[1]) < min_box_px):
        return None
    w_shade += 1.0
    for c, plane in enumerate(planes):
        plane[y0:y1, x0:x1] *= w_shade[..., c]
    return box


@dataclass
class Crack:
    """A crack as ground polylines in the crack's own frame (metres: forward, left)."""

    lines: list[np.ndarray]
    width_m: float
    length_m: float
    darkness: float
    cell_m: float = 0.5       # typical spacing between neighbouring lines (alligator cells are small)

    def axis(self) -> tuple[np.ndarray, float, float, float]:
        """The crack as a line: (centre (forward, left), length, width, angle). The long axis is the principal
        axis of its drawn points; length and width are its extent along and across that axis, the centre is
        the middle of that extent and the angle (radians, from the crack frame's forward axis towards its left)
        is that of the long axis, in [0, pi). This is what the agent measures (edge_agent.perception.geolocate)."""
        pts = np.concatenate(self.lines)
        mean = pts.mean(axis=0)
        _, vecs = np.linalg.eigh(np.cov((pts - mean).T))
        major = vecs[:, -1]
        minor = np.array([-major[1], major[0]])
        along, across = (pts - mean) @ major, (pts - mean) @ minor
        centre = mean + major * (along.max() + along.min()) / 2 + minor * (across.max() + across.min()) / 2
        angle = math.atan2(major[1], major[0]) % math.pi
        return centre, float(np.ptp(along)), float(np.ptp(across)), float(angle)


def random_crack(rng: np.random.Generator, length_m: float | None = None) -> Crack:
    """A meandering crack with a few branches, or an alligator patch (a net of short cells)."""
    length_m = float(length_m or rng.uniform(0.6, 3.0))
    lines: list[np.ndarray] = []
    cell_m = 0.5
    if rng.random() < 0.3:
        # Alligator cracking: a strongly jittered grid whose edges are drawn as separate, partly missing segments,
        # so the cells come out as irregular polygons rather than a neat net.
        cells = max(2, int(length_m / 0.25))
        cell_m = length_m / cells
        g = np.stack(np.meshgrid(np.arange(cells + 1), np.arange(cells + 1), indexing="ij"), -1).astype(float)
        g = (g / cells - 0.5) * length_m + rng.normal(0, 0.25 * cell_m, g.shape)
        centre_dist = np.hypot(g[..., 0], g[..., 1]) / (length_m / 2)
        for i in range(cells + 1):
            for j in range(cells + 1):
                for di, dj in ((1, 0), (0, 1)):
                    a, b = (i, j), (i + di, j + dj)
                    if b[0] > cells or b[1] > cells:
                        continue
                    # Fewer segments towards the edge of the patch: it frays out instead of ending in a square.
                    if rng.random() < 0.15 + 0.6 * max(centre_dist[a], centre_dist[b]) ** 2:
                        continue
                    mid = (g[a] + g[b]) / 2 + rng.normal(0, 0.12 * cell_m, 2)
                    lines.append(np.array([g[a], mid, g[b]]))
        if not lines:
            lines.append(np.array([g[0, 0], g[cells, cells]]))
    else:
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(1, 4))):
            steps = max(3, int(length_m / 0.05 / (1 + len(lines))))
            turn = np.cumsum(rng.normal(0, 0.25, steps)) + heading
            pts = np.cumsum(np.column_stack([np.cos(turn), np.sin(turn)]) * 0.05, axis=0)
            start = lines[0][rng.integers(len(lines[0]))] if lines else -pts[len(pts) // 2]
            lines.append(pts + start)
            heading += rng.normal(0, 1.0)
    darkness = float(rng.uniform(0.35, 0.65))
    if cell_m < 0.5:
        darkness *= 0.7  # a dense net darkens a whole area: keep it grey, not a black blob like a hole
    allpts = np.concatenate(lines)
    ext = allpts.max(axis=0) - allpts.min(axis=0)
    return Crack(lines, width_m=float(ext[1]), length_m=float(ext[0]), darkness=darkness, cell_m=float(cell_m))


def paint_crack(planes: list[np.ndarray], crack: Crack, ground_h: np.ndarray, forward_m: float, left_m: float,
                yaw_rad: float = 0.0) -> tuple[float, float, float, float] | None:
    """Darken the crack's lines into the float colour planes (in place). Returns the box of the drawn lines
    (x1, y1, x2, y2 in pixels, clipped to the image), or None when it is out of view."""
    cy, sy = math.cos(yaw_rad), math.sin(yaw_rad)
    h_img, w_img = planes[0].shape[:2]
    polys = []
    for line in crack.lines:
        f = forward_m + line[:, 0] * cy - line[:, 1] * sy
        left = left_m + line[:, 0] * sy + line[:, 1] * cy
        if np.any(f < MIN_FORWARD_M):
            continue
        p = ground_h @ np.vstack([f, left, np.ones_like(f)])
        polys.append(np.round((p[:2] / p[2]).T * 16).astype(np.int32))  # 4 fractional bits for LINE_AA
    if not polys:
        return None
    allp = np.concatenate(polys) / 16
    x0, y0 = np.maximum(np.floor(allp.min(axis=0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(allp.max(axis=0)).astype(int) + 3, [w_img, h_img])
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    offset = np.array([x0, y0]) * 16
    cv2.polylines(mask, [p - offset for p in polys], False, 255, 1, cv2.LINE_AA, shift=4)
    factor = 1.0 - mask.astype(np.float32) * np.float32(crack.darkness / 255.0)
    for plane in planes:
        plane[y0:y1, x0:x1] *= factor
    lo = np.clip(allp.min(axis=0), 0, [w_img, h_img])
    hi = np.clip(allp.max(axis=0) + 1, 0, [w_img, h_img])
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def paint_patch(planes: list[np.ndarray], ground_h: np.ndarray, forward_m: float, left_m: float, yaw_rad: float,
                width_m: float, length_m: float, factor: float) -> bool:
    """A repaired (re-surfaced) rectangle: uniformly darker or lighter with straight edges, a distractor that
    is dark like a pothole but has neither its ragged outline nor its rim. False when out of view."""
    cy, sy = math.cos(yaw_rad), math.sin(yaw_rad)
    half = np.array([[length_m, width_m], [length_m, -width_m], [-length_m, -width_m], [-length_m, width_m]]) / 2
    f = forward_m + half[:, 0] * cy - half[:, 1] * sy
    left = left_m + half[:, 0] * sy + half[:, 1] * cy
    if np.any(f < MIN_FORWARD_M):
        return False
    p = ground_h @ np.vstack([f, left, np.ones(4)])
    uv = (p[:2] / p[2]).T
    h_img, w_img = planes[0].shape[:2]
    x0, y0 = np.maximum(np.floor(uv.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(uv.max(axis=0)).astype(int) + 2, [w_img, h_img])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return False
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [np.round((uv - [x0, y0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    gain = 1.0 - mask.astype(np.float32) * np.float32((1.0 - factor) / 255.0)
    for plane in planes:
        plane[y0:y1, x0:x1] *= gain
    return True
