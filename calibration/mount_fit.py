"""The camera's pitch, yaw and height from the road itself: lane markings meet at the vanishing point of the
direction the vehicle drives, and the driven lane's known width sets the scale.

An installer's phone level and tape leave the pitch a degree or two off, and an outside test measured what that
does: 1 deg of pitch moved potholes 1.3 m along the road, 2 deg moved them 2.2-2.7 m and split some into two
events; the metre grid of `calibrate check` moves only 6-7 px per degree, too little to see. Lane lines on a
straight road give the pitch to a fraction of a degree from each frame, and the median over a few frames is
steadier still. Roll is taken from the config (it needs a second vanishing direction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy.optimize import least_squares

from calibration.camera import Intrinsics, Mount
from calibration.projector import GroundProjector

MIN_ANGLE_DEG = 20.0  # markings flatter than this in the image are not lane lines seen from the lane
AGREE_DEG = 1.5  # a segment supports a vanishing point when it points at it within this angle
MAX_SEGMENTS = 150


@dataclass(frozen=True)
class FrameFit:
    """One frame's vanishing point (pixels) and what supports it."""

    vp: tuple[float, float]
    segments: np.ndarray  # the supporting segments, [N, 4] x1 y1 x2 y2
    support_px: float  # their total length
    boundaries: tuple[float, float] | None  # columns where the driven lane's left and right lines cross REF_ROW


REF_ROW = 0.9  # of the image height: where the lane's width is read (near the vehicle, well resolved)


def marking_segments(image: np.ndarray) -> np.ndarray:
    """Line segments along bright, narrow road markings (white and yellow lines), [N, 4]."""
    h, w = image.shape[:2]
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    # Bright and narrower than ~w/16 across: lane paint, not sky, sun glare or a pale verge.
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (max(9, w // 16), 1)))
    level = max(25.0, float(np.percentile(tophat, 95)))
    paint = (tophat >= level).astype(np.uint8) * 255
    edges = cv2.Canny(paint, 50, 150)
    found = cv2.HoughLinesP(edges, 1, np.pi / 360, threshold=max(15, h // 20), minLineLength=max(12, h // 14),
                            maxLineGap=max(5, h // 40))
    if found is None:
        return np.zeros((0, 4))
    seg = found.reshape(-1, 4).astype(np.float64)
    angle = np.degrees(np.arctan2(np.abs(seg[:, 3] - seg[:, 1]), np.abs(seg[:, 2] - seg[:, 0])))
    seg = seg[angle >= MIN_ANGLE_DEG]
    lengths = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
    return seg[np.argsort(-lengths)[:MAX_SEGMENTS]]


def vanishing_point(segments: np.ndarray) -> tuple[tuple[float, float], np.ndarray] | None:
    """The point most segment length points at, with segments on both of its sides (one line's pieces meet
    anywhere along it), refined by least squares; and the supporting segments' mask. None when there is none."""
    if len(segments) < 2:
        return None
    lines = _homogeneous(segments)
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    direction = np.arctan2(segments[:, 3] - segments[:, 1], segments[:, 2] - segments[:, 0])
    i, j = np.triu_indices(len(segments), 1)
    keep = np.abs(np.sin(direction[i] - direction[j])) >= math.sin(math.radians(5))
    crossings = np.cross(lines[i[keep]], lines[j[keep]])
    crossings = crossings[np.abs(crossings[:, 2]) >= 1e-9]
    points = crossings[:, :2] / crossings[:, 2:]
    mids_u = (segments[:, 0] + segments[:, 2]) / 2
    best, best_score = None, 0.0
    # Every pair's crossing judged at once (a loop over the ~11,000 pairs of 150 segments took 0.6 s a frame),
    # in chunks that bound the memory on a Pi.
    for start in range(0, len(points), 2048):
        chunk = points[start:start + 2048]
        inliers = _supports_many(segments, chunk)
        both = ((inliers & (mids_u < chunk[:, :1])).any(1)) & ((inliers & (mids_u > chunk[:, :1])).any(1))
        scores = np.where(both, inliers @ lengths, 0.0)
        k = int(np.argmax(scores))
        if scores[k] > best_score:
            best, best_score = chunk[k], float(scores[k])
    if best is None:
        return None
    inliers = _supports(segments, best)
    a = lines[inliers][:, :2] / np.linalg.norm(lines[inliers][:, :2], axis=1, keepdims=True)
    c = lines[inliers][:, 2] / np.linalg.norm(lines[inliers][:, :2], axis=1)
    wts = lengths[inliers]
    refined = np.linalg.lstsq(a * wts[:, None], -c * wts, rcond=None)[0]
    return (float(refined[0]), float(refined[1])), _supports(segments, refined)


def fit_frame(image: np.ndarray) -> FrameFit | None:
    segments = marking_segments(image)
    found = vanishing_point(segments)
    if found is None:
        return None
    vp, inliers = found
    support = segments[inliers]
    return FrameFit(vp, support, float(np.hypot(support[:, 2] - support[:, 0], support[:, 3] - support[:, 1]).sum()),
                    lane_boundaries(support, vp, image.shape[1], image.shape[0]))


def lane_boundaries(segments: np.ndarray, vp: tuple[float, float], width: int, height: int
                    ) -> tuple[float, float] | None:
    """Columns at REF_ROW of the nearest marked line left and right of the image's middle (the driven lane's
    lines), each the length-weighted mean of the segments that lie on it."""
    row = REF_ROW * height
    mids = (segments[:, :2] + segments[:, 2:]) / 2
    cols = vp[0] + (mids[:, 0] - vp[0]) * (row - vp[1]) / np.where(mids[:, 1] == vp[1], 1e-9, mids[:, 1] - vp[1])
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    sides = []
    for side in (cols < width / 2, cols >= width / 2):
        if not side.any():
            return None
        nearest = cols[side][np.argmin(np.abs(cols[side] - width / 2))]
        on_it = side & (np.abs(cols - nearest) < 0.03 * width)
        sides.append(float(np.average(cols[on_it], weights=lengths[on_it])))
    return sides[0], sides[1]


def ideal_view(image: np.ndarray, intr: Intrinsics) -> tuple[np.ndarray, Intrinsics]:
    """IMAGE as an ideal lens of INTR's focal length would show it, and that lens: lane lines are straight
    only there (found in the distorted picture, the pitch came out 0.8° off with the right intrinsics file)."""
    if not intr.has_distortion:
        return image, intr
    return cv2.undistort(image, intr.matrix, intr.dist_coeffs), ideal_lens(intr)


def ideal_lens(intr: Intrinsics) -> Intrinsics:
    """INTR without its distortion: the lens `ideal_view`'s pictures are taken with."""
    return Intrinsics(intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height)


def mount_from_vanishing_point(intr: Intrinsics, vp: tuple[float, float], base: Mount) -> Mount:
    """BASE with the pitch and yaw whose straight-ahead direction vanishes at VP (roll kept)."""
    ideal = cv2.undistortPoints(np.array([[vp]], np.float64), intr.matrix, intr.dist_coeffs).reshape(2)

    def residual(angles: np.ndarray) -> np.ndarray:
        d = replace(base, pitch_deg=angles[0], yaw_deg=angles[1]).rotation() @ np.array([1.0, 0.0, 0.0])
        return d[:2] / d[2] - ideal

    start = np.array([math.degrees(math.atan(-ideal[1])), math.degrees(math.atan(ideal[0]))])
    angles = least_squares(residual, start).x
    return replace(base, pitch_deg=float(angles[0]), yaw_deg=float(angles[1]))


def height_from_lane(intr: Intrinsics, mount: Mount, boundaries: tuple[float, float], lane_width_m: float
                     ) -> float | None:
    """The camera height at which the lane's two lines at REF_ROW lie LANE_WIDTH_M apart on the road (ground
    offsets scale with the height)."""
    unit = GroundProjector(intr, replace(mount, height_m=1.0, lateral_m=0.0))
    row = REF_ROW * intr.height
    left, right = unit.pixel_to_ground(boundaries[0], row), unit.pixel_to_ground(boundaries[1], row)
    if left is None or right is None or abs(left[1] - right[1]) < 1e-6:
        return None
    return lane_width_m / abs(left[1] - right[1])


def misplaced_m(intr: Intrinsics, configured: Mount, actual: Mount, ahead_m: float) -> float | None:
    """How far from the truth CONFIGURED places a spot AHEAD_M straight ahead of a camera mounted as ACTUAL; None
    when either mount does not see it."""
    pixel = GroundProjector(intr, actual).ground_to_pixel(ahead_m, 0.0)
    placed = GroundProjector(intr, configured).pixel_to_ground(*pixel) if pixel is not None else None
    return None if placed is None else math.dist(placed, (ahead_m, 0.0))


def _homogeneous(segments: np.ndarray) -> np.ndarray:
    ones = np.ones(len(segments))
    return np.cross(np.column_stack([segments[:, :2], ones]), np.column_stack([segments[:, 2:], ones]))


def _supports(segments: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Segments that point at POINT and lie wholly below it: markings on the road are below its vanishing
    point (a point on one edge line, with that line's pieces above and below it, took a re-test's fit 1° off)."""
    return _supports_many(segments, np.asarray(point, dtype=np.float64).reshape(1, 2))[0]


def _supports_many(segments: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`_supports` for each of POINTS [P, 2]: a [P, N] mask."""
    mids = (segments[:, :2] + segments[:, 2:]) / 2
    seg_dir = segments[:, 2:] - segments[:, :2]
    unit = seg_dir / np.maximum(np.linalg.norm(seg_dir, axis=1, keepdims=True), 1e-9)
    dx, dy = points[:, :1] - mids[None, :, 0], points[:, 1:2] - mids[None, :, 1]
    along = unit[None, :, 0] * dx + unit[None, :, 1] * dy
    agree = along * along >= math.cos(math.radians(AGREE_DEG)) ** 2 * (dx * dx + dy * dy)
    below = np.minimum(segments[:, 1], segments[:, 3])[None] > points[:, 1:2] + 2
    return agree & below


MIN_FRAMES = 5
MAX_SPREAD = 0.015  # of the image width: frames whose points scatter more do not show one straight road


@dataclass(frozen=True)
class MountFit:
    """The mount from several frames: medians of each frame's vanishing point and lane columns."""

    mount: Mount
    vp: tuple[float, float]
    vp_spread_px: float  # median absolute deviation of the frames' vanishing points
    frames_used: int
    height_from_lane: bool

    def doubts(self, width: int) -> list[str]:
        """Why this fit should not be used (a re-test got pitch 65° and height 13 m from frames in heavy rain,
        printed as the values to set)."""
        out = []
        if self.frames_used < MIN_FRAMES:
            out.append(f"markings met in {self.frames_used} frame(s); at least {MIN_FRAMES} are needed")
        if self.vp_spread_px > MAX_SPREAD * width:
            out.append(f"the frames' vanishing points scatter {self.vp_spread_px:.0f} px (at most "
                       f"{MAX_SPREAD * width:.0f}): not one straight road, or markings mistaken")
        m = self.mount
        if not (-10 <= m.pitch_deg <= 60 and abs(m.yaw_deg) <= 45 and 0 < m.height_m <= 5):
            out.append(f"pitch {m.pitch_deg:.1f}°, yaw {m.yaw_deg:.1f}°, height {m.height_m:.2f} m is no camera "
                       "mount (pitch -10..60, yaw -45..45, height 0..5 m)")
        return out


def fit_mount(fits: list[FrameFit], intr: Intrinsics, base: Mount, lane_width_m: float | None) -> MountFit:
    """Pitch and yaw from the median vanishing point of FITS (one camera, one resolution: INTR's), and the
    height from the median lane columns when LANE_WIDTH_M is given; the rest of BASE is kept."""
    vps = np.array([f.vp for f in fits])
    vp = (float(np.median(vps[:, 0])), float(np.median(vps[:, 1])))
    spread = float(np.median(np.hypot(vps[:, 0] - vp[0], vps[:, 1] - vp[1])))
    mount = mount_from_vanishing_point(intr, vp, base)
    lanes = np.array([f.boundaries for f in fits if f.boundaries is not None])
    if lane_width_m is not None and len(lanes):
        height = height_from_lane(intr, mount, (float(np.median(lanes[:, 0])), float(np.median(lanes[:, 1]))),
                                  lane_width_m)
        if height is not None:
            return MountFit(replace(mount, height_m=height), vp, spread, len(fits), True)
    return MountFit(mount, vp, spread, len(fits), False)


def draw_fit(image: np.ndarray, fit: FrameFit | None, vp: tuple[float, float]) -> np.ndarray:
    """IMAGE with the supporting marking segments (magenta) and, fainter, their rays to the vanishing point."""
    rays = image.copy()
    for x1, y1, x2, y2 in (fit.segments if fit is not None else []):
        lower = (x1, y1) if y1 > y2 else (x2, y2)
        cv2.line(rays, (round(lower[0]), round(lower[1])), (round(vp[0]), round(vp[1])), (255, 0, 255), 1,
                 cv2.LINE_AA)
    out = cv2.addWeighted(image, 0.6, rays, 0.4, 0)
    for x1, y1, x2, y2 in (fit.segments if fit is not None else []):
        cv2.line(out, (round(x1), round(y1)), (round(x2), round(y2)), (255, 0, 255), 2, cv2.LINE_AA)
    return out
