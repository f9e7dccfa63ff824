"""The camera model: pinhole intrinsics with OpenCV distortion, and how the camera is mounted on the vehicle."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ASPECT_TOLERANCE = 0.01  # intrinsics scale to another resolution of the same shape, not to another shape


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels for an image of `width` x `height`; `dist` holds OpenCV's
    (k1, k2, p1, p2[, k3, ...]) coefficients, empty for an ideal lens."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    dist: tuple[float, ...] = field(default=())

    @classmethod
    def from_hfov(cls, width: int, height: int, hfov_deg: float) -> Intrinsics:
        """An ideal camera with square pixels, the principal point in the centre and the given horizontal FOV."""
        f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
        return cls(fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height)

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist_coeffs(self) -> np.ndarray:
        return np.array(self.dist, dtype=np.float64)

    @property
    def has_distortion(self) -> bool:
        return any(abs(c) > 0 for c in self.dist)

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2 * math.atan((self.width / 2) / self.fx))

    def aspect_mismatch(self, width: int, height: int) -> str | None:
        """Why a WIDTHxHEIGHT frame cannot use these intrinsics by scaling (another shape), or None."""
        if abs(width / height - self.width / self.height) <= ASPECT_TOLERANCE * self.width / self.height:
            return None
        return (f"the camera delivers {width}x{height}, another shape than the {self.width}x{self.height} it was "
                "calibrated at: scaled intrinsics misplace what it sees")

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same lens at another resolution (a camera streaming a scaled mode)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height, self.dist)


@dataclass(frozen=True)
class Mount:
    """Where the camera sits on the vehicle.

    height_m: optical centre above the road; pitch_deg: downward tilt of the optical axis; roll_deg: rotation about
    the forward axis, positive = the camera's right side down;
    yaw_deg: the optical axis turned to the left of straight ahead; lateral_m: the camera left of the vehicle's
    centre line.
    """

    height_m: float = 1.4
    pitch_deg: float = 10.0
    roll_deg: float = 0.0
    yaw_deg: float = 0.0
    lateral_m: float = 0.0

    def rotation(self) -> np.ndarray:
        """R with X_cam = R @ (X_vehicle - C): vehicle axes (forward, left, up) to OpenCV camera axes
        (right, down, optical axis)."""
        y, p, r = (math.radians(a) for a in (self.yaw_deg, self.pitch_deg, self.roll_deg))
        rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
        # A positive angle about the left axis tips the forward axis down.
        ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
        rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
        to_cv = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=float)
        return to_cv @ rx.T @ ry.T @ rz.T

    def centre(self) -> np.ndarray:
        """The optical centre in the vehicle frame (forward, left, up), origin on the road below the
        vehicle's centre line at the camera's longitudinal position."""
        return np.array([0.0, self.lateral_m, self.height_m])
