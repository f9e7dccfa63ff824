"""Flat-road projection between image pixels and ground points in the vehicle frame.

Ground points are (forward_m, left_m): forward of the camera, left of the vehicle's centre line, on a flat road
plane. Lens distortion is honoured in both directions when the intrinsics carry it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from calibration.camera import Intrinsics, Mount

# Rays flatter than this never meet the road in practice (and blow up the arithmetic near the horizon).
_MIN_DOWN_COMPONENT = 1e-6
MAX_GROUND_RANGE_M = 1000.0
_EYE = np.eye(3)
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 1e-10)


class GroundProjector:
    """Pixel <-> ground mapping for one camera on one mount."""

    def __init__(self, intrinsics: Intrinsics, mount: Mount) -> None:
        self.intrinsics = intrinsics
        self.mount = mount
        self._k = intrinsics.matrix
        self._k_inv = np.linalg.inv(self._k)
        self._r = mount.rotation()
        self._c = mount.centre()
        self._rvec, _ = cv2.Rodrigues(self._r)
        self._tvec = -self._r @ self._c
        self._radius_limit: float | None = None

    # -- vectorised core -------------------------------------------------------------------------------------

    def pixels_to_ground(self, uv: np.ndarray) -> np.ndarray:
        """Nx2 pixels -> Nx2 (forward, left); rows whose ray misses the road (at or above the horizon, or beyond
        MAX_GROUND_RANGE_M) are NaN."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if self.intrinsics.has_distortion:
            # OpenCV's default 5 iterations leave ~0.03 px in the corners of a strong wide-angle lens; 20 converge.
            norm = cv2.undistortPoints(uv.reshape(-1, 1, 2), self._k, self.intrinsics.dist_coeffs, R=_EYE, P=_EYE,
                                       criteria=_UNDISTORT_CRITERIA).reshape(-1, 2)
            rays_cam = np.column_stack([norm, np.ones(len(norm))])
        else:
            rays_cam = np.column_stack([uv, np.ones(len(uv))]) @ self._k_inv.T
        rays = rays_cam @ self._r  # each row R^T @ ray: camera -> vehicle axes
        down = -rays[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(down > _MIN_DOWN_COMPONENT, self._c[2] / down, np.nan)
        ground = self._c[:2] + rays[:, :2] * t[:, None]
        far = np.hypot(ground[:, 0], ground[:, 1] - self._c[1]) > MAX_GROUND_RANGE_M
        ground[far] = np.nan
        return ground

    def ground_to_pixels(self, ground: np.ndarray) -> np.ndarray:
        """Nx2 (forward, left) -> Nx2 pixels; points behind the camera are NaN, and so, with lens distortion, are
        points so far outside the field of view that the distortion polynomial no longer holds (it folds back and
        would put them inside the image)."""
        ground = np.asarray(ground, dtype=np.float64).reshape(-1, 2)
        pts = np.column_stack([ground, np.zeros(len(ground))])
        cam = (pts - self._c) @ self._r.T
        behind = cam[:, 2] <= 1e-9
        if self.intrinsics.has_distortion:
            uv, _ = cv2.projectPoints(pts, self._rvec, self._tvec, self._k, self.intrinsics.dist_coeffs)
            uv = uv.reshape(-1, 2)
            with np.errstate(divide="ignore", invalid="ignore"):
                radius = np.hypot(cam[:, 0], cam[:, 1]) / cam[:, 2]
            behind |= ~(radius <= self._valid_radius())
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                uv = (cam[:, :2] / cam[:, 2:3]) * [self.intrinsics.fx, self.intrinsics.fy]
            uv = uv + np.array([self.intrinsics.cx, self.intrinsics.cy])
        uv[behind] = np.nan
        return uv

    def _valid_radius(self) -> float:
        """Largest ideal (undistorted) image radius, in normalised units, where the model is trusted: 1.25 x the
        image corners' (calibration data cannot reach further), capped where the radial term stops growing."""
        if self._radius_limit is None:
            w, h = self.intrinsics.width, self.intrinsics.height
            corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64).reshape(-1, 1, 2)
            norm = cv2.undistortPoints(corners, self._k, self.intrinsics.dist_coeffs, R=_EYE, P=_EYE,
                                       criteria=_UNDISTORT_CRITERIA).reshape(-1, 2)
            limit = 1.25 * float(np.hypot(norm[:, 0], norm[:, 1]).max())
            k = list(self.intrinsics.dist) + [0.0] * 5
            k1, k2, k3 = k[0], k[1], k[4]
            r = np.linspace(0, limit, 2000)
            slope = 1 + 3 * k1 * r**2 + 5 * k2 * r**4 + 7 * k3 * r**6  # d/dr of r * (1 + k1 r^2 + k2 r^4 + k3 r^6)
            folds = np.flatnonzero(slope <= 0)
            self._radius_limit = float(r[folds[0]]) if len(folds) else limit
        return self._radius_limit

    def ground_map(self) -> tuple[np.ndarray, np.ndarray]:
        """(forward, left) float32 HxW for every pixel centre of the image; NaN where the ray misses the road.
        Separable arithmetic for an ideal lens (fast enough to build per frame), `pixels_to_ground` otherwise."""
        w, h = self.intrinsics.width, self.intrinsics.height
        if self.intrinsics.has_distortion:
            uu, vv = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
            g = self.pixels_to_ground(np.column_stack([uu.ravel(), vv.ravel()])).reshape(h, w, 2)
            return g[..., 0].astype(np.float32), g[..., 1].astype(np.float32)
        # ray_vehicle = R^T K^-1 (u, v, 1) = u * a + v * b + c
        m = (self._r.T @ self._k_inv).astype(np.float32)
        u = np.arange(w, dtype=np.float32)[None, :]
        v = np.arange(h, dtype=np.float32)[:, None]
        rays = [m[i, 0] * u + (m[i, 1] * v + m[i, 2]) for i in range(3)]
        down = -rays[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(down > _MIN_DOWN_COMPONENT, np.float32(self._c[2]) / down, np.float32(np.nan))
        forward = rays[0] * t + np.float32(self._c[0])
        left = rays[1] * t + np.float32(self._c[1])
        far = np.abs(forward) > MAX_GROUND_RANGE_M
        forward[far] = np.nan
        left[far] = np.nan
        return forward, left

    # -- the agreed scalar interface -------------------------------------------------------------------------

    def pixel_to_ground(self, u: float, v: float) -> tuple[float, float] | None:
        """(forward_m, left_m) of the road point seen at pixel (u, v), or None when the ray misses the road."""
        f, left = self.pixels_to_ground(np.array([[u, v]]))[0]
        return None if math.isnan(f) else (float(f), float(left))

    def ground_to_pixel(self, forward_m: float, left_m: float) -> tuple[float, float] | None:
        """Pixel where the road point appears, or None when it lies behind the camera (or, with lens distortion,
        far outside the field of view). The pixel may lie outside the image; see `in_image`."""
        u, v = self.ground_to_pixels(np.array([[forward_m, left_m]]))[0]
        return None if math.isnan(u) else (float(u), float(v))

    def in_image(self, u: float, v: float) -> bool:
        return 0 <= u < self.intrinsics.width and 0 <= v < self.intrinsics.height

    def horizon_v(self, u: float | None = None) -> float:
        """Image row of the horizon at column u (the centre by default); rows below it see the road. Exact for an
        ideal lens: the row where the pixel's ray turns level."""
        u = self.intrinsics.cx if u is None else u
        m = self._r.T @ self._k_inv  # ray_vehicle = m @ (u, v, 1)
        if abs(m[2, 1]) < 1e-12:
            return -math.inf
        return float(-(m[2, 0] * u + m[2, 2]) / m[2, 1])

    # -- homography for painting on a flat road ----------------------------------------------------------------

    def ground_homography(self) -> np.ndarray:
        """3x3 H with pixel ~ H @ (forward, left, 1), exact for an ideal lens (the renderer's camera)."""
        r = self._r
        return self._k @ np.column_stack([r[:, 0], r[:, 1], -r @ self._c])

    # -- footprint and uncertainty -------------------------------------------------------------------------------

    def footprint(self, max_range_m: float = 30.0, samples_per_edge: int = 16) -> list[tuple[float, float]]:
        """The polygon of road the camera sees (forward, left), walking the image border, clipped at
        max_range_m forward of the camera."""
        w, h = self.intrinsics.width, self.intrinsics.height
        edge = np.linspace(0.0, 1.0, samples_per_edge, endpoint=False)
        border = np.concatenate([
            np.column_stack([edge * (w - 1), np.zeros_like(edge)]),
            np.column_stack([np.full_like(edge, w - 1), edge * (h - 1)]),
            np.column_stack([(1 - edge) * (w - 1), np.full_like(edge, h - 1)]),
            np.column_stack([np.zeros_like(edge), (1 - edge) * (h - 1)]),
        ])
        pts: list[tuple[float, float]] = []
        for u, v in border:
            g = self._ground_clipped(float(u), float(v), max_range_m)
            if g is not None:
                pts.append(g)
        return pts

    def _ground_clipped(self, u: float, v: float, max_range_m: float) -> tuple[float, float] | None:
        """The ground point at (u, v), or where that pixel's column meets the max-range line when the ray goes
        further (or misses the road)."""
        g = self.pixel_to_ground(u, v)
        if g is not None and g[0] <= max_range_m:
            return g
        # Walk down the column to where forward distance drops to max_range (monotone below the horizon).
        lo, hi = v, float(self.intrinsics.height - 1)
        g_hi = self.pixel_to_ground(u, hi)
        if g_hi is None or g_hi[0] > max_range_m:
            return None
        for _ in range(40):
            mid = (lo + hi) / 2
            g_mid = self.pixel_to_ground(u, mid)
            if g_mid is None or g_mid[0] > max_range_m:
                lo = mid
            else:
                hi = mid
        return self.pixel_to_ground(u, hi)

    def ground_error_per_pixel(self, u: float, v: float) -> tuple[float, float] | None:
        """Metres of ground error per pixel of image error at (u, v): (along the ray's forward direction,
        across). Grows roughly with distance squared forward and linearly across; None above the horizon."""
        g0 = self.pixel_to_ground(u, v)
        if g0 is None:
            return None
        gu = self.pixel_to_ground(u + 0.5, v)
        gv = self.pixel_to_ground(u, v - 0.5)  # upwards: further away, the worse side
        gu0 = self.pixel_to_ground(u - 0.5, v)
        gv0 = self.pixel_to_ground(u, v + 0.5)
        if None in (gu, gv, gu0, gv0):
            return None
        forward = math.dist(gv, gv0)  # type: ignore[arg-type]
        across = math.dist(gu, gu0)  # type: ignore[arg-type]
        return forward, across

    def ground_sigma_m(self, u: float, v: float, pixel_sigma: float = 1.0) -> float | None:
        """One horizontal 1-sigma ground error (metres) for an image point known to `pixel_sigma` pixels:
        the root-sum-square of the along and across terms."""
        e = self.ground_error_per_pixel(u, v)
        if e is None:
            return None
        return pixel_sigma * math.hypot(*e)
