"""Where on the ground a detected defect lies, in metres from the camera and in lat/lon.

A road defect is flat, so its whole box lies on the road plane: the calibration projects the box's bottom
edge (its near side) and top edge (its far side) to (forward, left) metres; the defect's centre is midway.
The ground point is rotated by the filtered heading and added to the filtered vehicle position at the frame's
time. A track's frames are combined with inverse-variance weights, so close, sharp views count more than far
ones.

Size. Its length is the forward distance between the near and the far edge. A far edge above the horizon or
beyond max_range_m is not measured: the view keeps its near edge (centre and width from there) and says nothing
of the length; a defect no view saw the far edge of is given its width as its length (it was 0). Its width is
the across-track extent, not the box's bottom edge: an image column is a line on the road through the point
below the camera, so a defect off to one side reaches the box's outer side with its near corner and its inner
side with its far corner, and the bottom edge's projection (the old width) is too wide by the defect's lateral
offset times (1 - near / far). Each side of the box is projected at both edges and the inner of the two taken; for a
rectangle aligned with the road this is its width exactly. Sizes are combined over a track's views with
weights 1 / size_sigma², size_sigma being BOX_EDGE_SIGMA_PX of box edge on the road at the far edge: it grows
with range², so the near views decide (a detector's box is a few pixels too large everywhere, which is
centimetres near the camera and decimetres at 10 m; GNSS error, which weighs the position, does not touch size).

Cracks are lines, not blobs (LINE_CLASSES). A box around a crack says where it is but not which diagonal it
follows nor how thin it is, so a crack's view is measured from the image: the dark thin strokes inside its box
(a morphological black-hat, thresholded robustly against the asphalt's own texture) are projected onto the road
and their principal axis taken. Length and width are the strokes' extent along and across that axis (1st-99th
percentile, so a speck of noise does not stretch it), the position is the middle of that extent, and the axis's
angle in the vehicle frame becomes, with the heading, the crack's compass orientation (0-180°). Views are
combined as above, the orientation as a weighted axial mean. Without the image, or with too few stroke pixels,
the view keeps the box's extent with its diagonal as the length (a crack's box is spanned by its ends) and no
orientation. Strokes spread about as wide as long (AREA_ASPECT) are a net of cells, alligator or block cracking:
an area with no axis to follow, measured like a blob along and across the road. On real survey frames, where most
cracking is such nets, their principal axis was an arbitrary diagonal and the map drew each patch as a line
across the lane. A track's orientation comes from its line views when they outweigh its area views; otherwise
the crack is an area (no orientation: the server keeps it as a point defect with its size).

Uncertainty of one view (1 sigma, metres), growing with range d from a camera at height h:
    sigma_proj = sqrt(projection_sigma_m² + (2 px · ground metres per pixel at the box's bottom)²
                      + ((h² + d²) / h · pitch_sigma)²)
the last term being how far a pitch error (road slope, the vehicle nodding) moves a ground point.
h_accuracy_m of the combined position = sqrt(gnss_sigma² + 1 / Σ(1/sigma_proj²)), where gnss_sigma is the
weighted mean of the filter's h_std over the views: GNSS errors are correlated over the seconds a defect is
in view, so averaging views does not shrink them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import cv2
import numpy as np

from calibration.projector import GroundProjector
from edge_agent.config.events import EventsConfig
from roadmon_contract.geodesy import enu_offset, offset_latlon

BOX_EDGE_SIGMA_PX = 2.0         # how well a detector's box edge sits on the defect's edge, pixels
BORDER_PX = 2.0                 # a box this close to the image border is cut off by it
LINE_CLASSES = frozenset({"crack"})  # defects measured as lines along their long axis (module doc)
STROKE_KERNEL_PX = 9            # black-hat kernel: wider than a crack's stroke, narrower than a pothole
STROKE_MIN_CONTRAST = 8.0       # grey levels a stroke pixel must be darker than its surroundings, at least
STROKE_MIN_PIXELS = 8           # fewer stroke pixels than this measure nothing
STROKE_MAX_PIXELS = 4000        # enough for the axis; more only costs time
AREA_ASPECT = 0.5               # strokes at least this wide across their axis as along it are an area (module doc)


class PoseLike(Protocol):
    """What geolocation needs of the filter's Pose (edge_agent.gnss.kalman.Pose). Read-only: the Pose is frozen."""

    @property
    def lat(self) -> float: ...
    @property
    def lon(self) -> float: ...
    @property
    def speed_mps(self) -> float: ...
    @property
    def heading_deg(self) -> float | None: ...
    @property
    def h_std_m(self) -> float: ...


@dataclass(frozen=True)
class GroundBox:
    """A detection's box on the road, in the vehicle frame at the frame's time."""

    forward_m: float          # centre of the defect
    left_m: float
    width_m: float            # across the road (the across-track extent, see the module doc)
    length_m: float           # along the road (forward distance from the near edge to the far edge)
    range_m: float            # distance from the camera to the near edge, what the error grows with
    sigma_m: float            # 1-sigma horizontal projection error of the centre
    corners: np.ndarray       # 4x2 (forward, left): bottom-left, bottom-right, top-right, top-left
    truncated: bool = False   # the box touches the image border: part of the defect is outside the picture
    size_sigma_m: float = 0.0  # 1-sigma of width and length: a box edge's error on the road at the far edge
    axis_deg: float | None = None  # a line's long axis, degrees from forward towards the left, [0, 180)
    length_seen: bool = True  # False: the far edge was above the horizon or beyond range, length_m is 0
    area: bool = False        # a line class measured as a net of cells (alligator): an area, no axis


@dataclass(frozen=True)
class Located:
    lat: float
    lon: float
    h_accuracy_m: float
    width_m: float
    length_m: float
    orientation_deg: float | None = None  # a line's long axis, compass degrees [0, 180); None for blobs
    segment: int = 0  # the position filter's segment whose poses placed it (Pose.segment)


def vehicle_to_enu(forward_m: float, left_m: float, heading_deg: float) -> tuple[float, float]:
    """A vehicle-frame offset as (east, north) for a vehicle heading HEADING_DEG (clockwise from north)."""
    h = math.radians(heading_deg)
    east = forward_m * math.sin(h) - left_m * math.cos(h)
    north = forward_m * math.cos(h) + left_m * math.sin(h)
    return east, north


class Geolocator:
    """Boxes to ground boxes, ground boxes plus poses to lat/lon, and a track's views combined."""

    def __init__(self, projector: GroundProjector, cfg: EventsConfig | None = None, max_range_m: float = 25.0):
        self.projector = projector
        self.cfg = cfg or EventsConfig()
        self.max_range_m = max_range_m
        self._pitch_sigma = math.radians(self.cfg.pitch_sigma_deg)

    def ground_box(self, bbox: Sequence[float]) -> GroundBox | None:
        """Project a pixel box onto the road; None when its near edge misses the road or lies beyond range."""
        x1, y1, x2, y2 = (float(c) for c in bbox)
        xm = (x1 + x2) / 2
        pts = self.projector.pixels_to_ground(np.array([[x1, y2], [x2, y2], [x2, y1], [x1, y1], [xm, y2], [xm, y1]]))
        near = pts[4]
        if np.isnan(near).any() or near[0] > self.max_range_m or near[0] <= 0:
            return None
        far = pts[5]
        length_seen = not np.isnan(far).any() and far[0] <= self.max_range_m
        if not length_seen:
            # The top edge is above the horizon or beyond range (a roof camera's far box reached 33 m and made a
            # 6 m pothole): its length is not measured here, so the box stands on its near edge.
            far = near
        corners = pts[:4].copy()
        if not length_seen:
            corners[2:] = corners[1::-1]  # top-right, top-left := bottom-right, bottom-left
        bad = np.isnan(corners).any(axis=1)
        for k in np.flatnonzero(bad):
            corners[k] = near if k < 2 else far
        centre = (near + far) / 2
        # Left side of the box (x1) at the near and far edge, right side (x2) likewise: the inner one bounds it.
        width = max(0.0, float(min(corners[0, 1], corners[3, 1]) - max(corners[1, 1], corners[2, 1])))
        length = max(0.0, float(far[0] - near[0]))
        intr = self.projector.intrinsics
        truncated = x1 <= BORDER_PX or y1 <= BORDER_PX or x2 >= intr.width - 1 - BORDER_PX \
            or y2 >= intr.height - 1 - BORDER_PX
        edge = self.projector.ground_sigma_m(xm, y1, pixel_sigma=BOX_EDGE_SIGMA_PX) if far is not near else None
        size_sigma = edge if edge is not None else self.max_range_m
        return GroundBox(forward_m=float(centre[0]), left_m=float(centre[1]), width_m=width, length_m=length,
                         range_m=float(math.hypot(near[0], near[1] - self.projector.mount.lateral_m)),
                         sigma_m=self.sigma_m(xm, y2, float(centre[0])), corners=corners, truncated=truncated,
                         size_sigma_m=float(size_sigma), length_seen=length_seen)

    def line_box(self, box: GroundBox, image: np.ndarray | None, bbox: Sequence[float]) -> GroundBox:
        """BOX measured as a line (a crack) from the strokes inside BBOX in IMAGE (module doc)."""
        strokes = self._stroke_points(image, bbox) if image is not None else None
        if strokes is None:
            return replace(box, length_m=math.hypot(box.length_m, box.width_m),
                           width_m=min(box.length_m, box.width_m))
        points, weights = strokes
        mean = np.average(points, axis=0, weights=weights)
        cov = np.cov((points - mean).T, aweights=weights)
        _, vecs = np.linalg.eigh(cov)
        major = vecs[:, -1]
        minor = np.array([-major[1], major[0]])
        along_lo, along_hi = np.percentile((points - mean) @ major, [1, 99])
        across_lo, across_hi = np.percentile((points - mean) @ minor, [1, 99])
        if across_hi - across_lo >= AREA_ASPECT * (along_hi - along_lo):
            lo, hi = np.percentile(points, [1, 99], axis=0)
            return replace(box, forward_m=float(lo[0] + hi[0]) / 2, left_m=float(lo[1] + hi[1]) / 2,
                           length_seen=True, length_m=float(hi[0] - lo[0]), width_m=float(hi[1] - lo[1]),
                           axis_deg=None, area=True)
        centre = mean + major * (along_lo + along_hi) / 2 + minor * (across_lo + across_hi) / 2
        return replace(box, forward_m=float(centre[0]), left_m=float(centre[1]), length_seen=True,
                       length_m=float(along_hi - along_lo), width_m=float(across_hi - across_lo),
                       axis_deg=math.degrees(math.atan2(major[1], major[0])) % 180.0)

    def _stroke_points(self, image: np.ndarray, bbox: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
        """Ground points (forward, left) of the dark thin strokes inside BBOX, with their contrast as weights;
        None when there are too few to measure a line."""
        h, w = image.shape[:2]
        x1, y1 = max(0, math.floor(bbox[0])), max(0, math.floor(bbox[1]))
        x2, y2 = min(w, math.ceil(bbox[2])), min(h, math.ceil(bbox[3]))
        if x2 - x1 < 3 or y2 - y1 < 3:
            return None
        pad = STROKE_KERNEL_PX  # the black-hat needs background around the box's edge strokes
        c1, r1, c2, r2 = max(0, x1 - pad), max(0, y1 - pad), min(w, x2 + pad), min(h, y2 + pad)
        grey = image[r1:r2, c1:c2]
        if grey.ndim == 3:
            grey = cv2.cvtColor(grey, cv2.COLOR_BGR2GRAY)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (STROKE_KERNEL_PX, STROKE_KERNEL_PX))
        hat = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel).astype(np.float32)
        hat = hat[y1 - r1:y2 - r1, x1 - c1:x2 - c1]
        median = float(np.median(hat))
        spread = 1.4826 * float(np.median(np.abs(hat - median)))
        rows, cols = np.nonzero(hat > max(STROKE_MIN_CONTRAST, median + 4 * spread))
        if len(rows) < STROKE_MIN_PIXELS:
            return None
        if len(rows) > STROKE_MAX_PIXELS:
            keep = np.linspace(0, len(rows) - 1, STROKE_MAX_PIXELS).astype(int)
            rows, cols = rows[keep], cols[keep]
        weights = hat[rows, cols]
        ground = self.projector.pixels_to_ground(np.column_stack([cols + x1 + 0.5, rows + y1 + 0.5]))
        ok = ~np.isnan(ground).any(axis=1) & (ground[:, 0] > 0) & (ground[:, 0] <= self.max_range_m)
        if ok.sum() < STROKE_MIN_PIXELS:
            return None
        return ground[ok], weights[ok]

    def sigma_m(self, u: float, v: float, forward_m: float) -> float:
        """1-sigma projection error of a ground point seen at (u, v) FORWARD_M ahead (see module doc)."""
        h = self.projector.mount.height_m
        per_px = self.projector.ground_sigma_m(u, v, pixel_sigma=BOX_EDGE_SIGMA_PX) or 0.0
        pitch = (h * h + forward_m * forward_m) / h * self._pitch_sigma
        return math.sqrt(self.cfg.projection_sigma_m ** 2 + per_px ** 2 + pitch ** 2)

    def placeable(self, pose: PoseLike | None) -> bool:
        """Whether POSE may place a defect. A 'stale' pose (a long GNSS dropout) is a frozen position while the
        vehicle drove on: it would put the defect wherever the outage began. A pose whose 1-sigma exceeds
        events.max_pose_h_std_m is too uncertain to tell one defect from the next."""
        return self.unplaceable_why(pose) is None

    def unplaceable_why(self, pose: PoseLike | None) -> str | None:
        """Why POSE may not place a defect, in words for the fleet's dashboard; None when it may."""
        if pose is None or pose.lat is None:
            return "no GNSS fix"
        if getattr(pose, "state", None) == "stale":
            return "no GNSS fix for a while (the last position is stale)"
        if float(pose.h_std_m) > self.cfg.max_pose_h_std_m:
            return (f"position too uncertain ({float(pose.h_std_m):.0f} m, events.max_pose_h_std_m "
                    f"{self.cfg.max_pose_h_std_m:g})")
        return None

    @staticmethod
    def to_world(box: GroundBox, pose: PoseLike, heading_deg: float) -> tuple[float, float]:
        """The defect centre's (lat, lon), from the vehicle's pose and heading at the frame's time."""
        east, north = vehicle_to_enu(box.forward_m, box.left_m, heading_deg)
        return offset_latlon(pose.lat, pose.lon, east, north)

    @staticmethod
    def combine(views: Sequence[tuple[GroundBox, PoseLike, float]]) -> Located | None:
        """Inverse-variance mean of a track's views (ground box, pose, heading); None without any view.
        Views cut off by the image border place the defect wrongly (their box edge is the border) and are
        left out unless there is nothing else."""
        whole = [v for v in views if not v[0].truncated]
        views = whole or views
        if not views:
            return None
        # A track seen across a filter reset: the poses before it disagree with those after by the jump that
        # made it (mixed, a defect in view at a jump of 11 km was placed 90-390 m from both), and the filter
        # took the newer ones as the truth.
        segment = max(getattr(pose, "segment", 0) for _, pose, _ in views)
        views = [v for v in views if getattr(v[1], "segment", 0) == segment]
        lat0, lon0 = Geolocator.to_world(*views[0])
        east = north = wsum = gnss = proj_w = width = length = size_w = length_w = line_w = area_w = 0.0
        axial = np.zeros(2)  # a line's orientation: doubled angles, so that 179° and 1° average to 0°
        for box, pose, heading in views:
            lat, lon = Geolocator.to_world(box, pose, heading)
            e, n = enu_offset(lat0, lon0, lat, lon)
            gnss_sigma = max(float(pose.h_std_m), 0.0)
            w = 1.0 / (box.sigma_m ** 2 + gnss_sigma ** 2 + 1e-6)
            east += w * e
            north += w * n
            gnss += w * gnss_sigma
            proj_w += 1.0 / (box.sigma_m ** 2 + 1e-6)
            wsum += w
            ws = 1.0 / (box.size_sigma_m ** 2 + 1e-6)
            width += ws * box.width_m
            size_w += ws
            if box.length_seen:
                length += ws * box.length_m
                length_w += ws
            area_w += ws if box.area else 0.0
            if box.axis_deg is not None:
                bearing = math.radians(2 * (heading - box.axis_deg))  # the axis as a compass bearing, doubled
                axial += ws * np.array([math.cos(bearing), math.sin(bearing)])
                line_w += ws
        lat, lon = offset_latlon(lat0, lon0, east / wsum, north / wsum)
        h_acc = math.sqrt((gnss / wsum) ** 2 + 1.0 / proj_w)
        line = axial.any() and line_w > area_w  # mostly seen as a net of cells: an area (module doc)
        orientation = math.degrees(math.atan2(axial[1], axial[0])) / 2 % 180.0 if line else None
        # No view saw the far edge: a defect as long as it is wide (a pothole is roughly round) rather than 0 m.
        length = length / length_w if length_w else width / size_w
        return Located(lat=lat, lon=lon, h_accuracy_m=h_acc, width_m=width / size_w, length_m=length,
                       orientation_deg=orientation, segment=segment)


def severity(class_name: str, width_m: float, length_m: float, cfg: EventsConfig) -> float:
    """0-1: the class weight times how big the defect is, sqrt(area / severe_area_m2) capped at 1.

    The square root makes severity follow the defect's linear size (a 0.5 m pothole is not four times less
    severe than a 1 m one); the class weight ranks kinds of damage (a pothole over a crack by default). With
    the default severe_area_m2 of 1 m² the size part is simply the defect's size in metres: a hole about a
    metre across fills a wheel track and cannot be steered around within the lane, which is where the scale
    tops out, while 0.3-0.6 m holes stay in the lower half. (A monocular camera cannot see depth, which
    road-condition standards also use; size is what it measures.)
    """
    weight = cfg.class_weights.get(class_name, cfg.default_class_weight)
    size = min(1.0, math.sqrt(max(width_m, 0.0) * max(length_m, 0.0) / cfg.severe_area_m2))
    return round(min(1.0, max(0.0, weight * size)), 3)
