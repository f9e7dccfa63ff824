"""Detections across frames become tracks; one physical defect is one track.

Tracks live in the vehicle frame (forward, left metres on the road). Between frames each track is moved by
the vehicle's own motion (distance driven, heading change), so a defect's predicted place in the next frame
is known both on the ground and, projected back through the calibration, as a box in the image. A detection
joins a track when it lies within a ground gate of the prediction (the gate widens with range, as the
projection gets coarser) or overlaps the predicted box (IoU), and in any case its box centre is within
pixel_gate box diagonals of the predicted box's; pairs are chosen by the Hungarian method.

Tracks are one per physical defect, whatever class single frames give it: far away a model may call a pothole
a crack for a few frames before it calls it a pothole for twenty. A detection of another class may join a track
(at a cost of CLASS_SWITCH_COST, so a same-class pair wins a tie), and the track's class is the one with the
highest summed vote over its detections, a detection voting its score times the square root of its box's area
in pixels: a far defect's few-pixel box says less about what it is than the same defect seen large from close by
(a pothole called `crack` in 12 frames at 20-30 m and `pothole` in 8 nearer ones is a pothole). The model may
also box one defect twice in a frame, once per class: such boxes (IoU >= DUPLICATE_IOU) are one detection, the
higher-scored box, voting for both classes. Or it may switch class between two runs of frames: a track that ends
while a track of another class on the same spot (within the ground gate) is alive, or ends in the same frame, is
folded into that one instead of becoming an event, so the defect is reported once, as the class with the most
votes. (Two defects of different classes within a gate of each other are reported as one.) Or it may box one
defect twice over a run of frames with boxes that overlap less than NMS removes (a far pothole as two crack
boxes, IoU ~0.3): two tracks of one class. A track that ends while another of its class is on the same spot,
their boxes overlapping (median IoU >= DUPLICATE_TRACK_IOU) in the frames both were seen, is folded into it too.
Of two tracks ending together, the shorter is folded into the longer. On bench_seeds (seeds 1-8) these rules
took the false crack events from 8 to 1: seven were potholes reported a second time as cracks.
Each detection is also measured as a line (edge_agent.perception.geolocate line_box), so a track that ends as a
crack has its line geometry in every view (`Track.ground_of`).

A track is confirmed once min_frames of its detections are whole (their box clear of the image border), or two
whole ones confirm_travel_m of driving apart, and the median of its last score_window scores, a missed frame
counting 0, reaches confirm_score. The second way is for boxes that process a frame every few metres (a Pi at
highway speed): a defect the model finds from 15 m is then in view for 2-3 frames, and on simulated drives at
4.2 m per frame min_frames alone let 5 of 7 potholes go. Two views that far apart which agree on the spot are a
stronger check than three a few decimetres apart, and at high frame rates a pair with misses between them fails
the score median. A box cut by the
border shows an unknown part of something: its place and size are wrong (the geolocator leaves such views out),
and on simulated drives it was what false events were made of (a few frames of road edge at the right-hand
border, 0.4-0.6 confidence).

With approach_tolerance set (off by default), a confirmed track must also behave like a point fixed on the
road: as the vehicle drives D metres, the near edge of its whole views comes D metres closer. The near edge's
forward distance is fitted against the distance driven; once the vehicle drove approach_min_m during the whole
views, the slope must lie within approach_tolerance of -1 (something that keeps its distance, such as a glare or
a mark on the windscreen, has a slope near 0). A vehicle that stands cannot tell, and is not judged.

A track ends when it has been missed max_misses frames in a row
or its prediction has left the picture under the bonnet; a confirmed track then yields one finished track,
from which the pipeline makes one event. A track that stays in view longer than emit_after_s (a parked
vehicle) is emitted while still alive, once.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import count
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from edge_agent.config.tracker import TrackerConfig
from edge_agent.gnss.motion import Motion
from edge_agent.perception.geolocate import LINE_CLASSES, Geolocator, GroundBox
from roadmon_contract.geodesy import distance_m

log = logging.getLogger(__name__)

_NO_PAIR = 1e6
CLASS_SWITCH_COST = 0.5   # added to a pair whose detection's class is not the track's (module doc)
DUPLICATE_IOU = 0.5       # boxes of different classes overlapping this much in one frame are one detection
DUPLICATE_TRACK_IOU = 0.2  # two tracks whose boxes overlap this much (median over shared frames) box one defect


@dataclass(frozen=True)
class Observation:
    """One frame in which a track's defect was detected."""

    t_mono: float
    bbox: tuple[float, float, float, float]
    score: float
    ground: GroundBox
    pose: Any = None                 # the filter's Pose at the frame's time (None without a fix)
    heading_deg: float | None = None
    utc: datetime | None = None
    odometer_m: float = 0.0          # distance the vehicle had driven when the frame was taken
    line: GroundBox | None = None    # the same view measured as a line (a crack; see Geolocator.line_box)


@dataclass
class Track:
    id: int
    class_id: int
    class_name: str
    first_mono: float
    observations: list[Observation] = field(default_factory=list)
    recent: deque = field(default_factory=deque)     # last score_window scores, misses as 0
    misses: int = 0
    confirmed: bool = False
    emitted: bool = False
    folded: bool = False                             # absorbed into another track (Tracker._fold)
    pred: np.ndarray | None = None                   # predicted ground corners (4x2) in the current frame
    best: Observation | None = None
    best_crop: np.ndarray | None = None              # the defect only, from the best frame
    best_frame: np.ndarray | None = None             # only when full frames are configured
    class_scores: dict[int, float] = field(default_factory=dict)  # summed class_vote per class id
    class_names: dict[int, str] = field(default_factory=dict)
    line_classes: frozenset[str] = LINE_CLASSES      # folded names measured as lines (tracker.line_classes)

    def predicted(self) -> np.ndarray:
        """The predicted ground corners. Every track the tracker holds has them: its first detection sets them."""
        if self.pred is None:
            raise ValueError(f"track {self.id} has no predicted position: it was never given a detection")
        return self.pred

    def vote(self, class_id: int, class_name: str, weight: float) -> None:
        """Count a detection's class with WEIGHT (class_vote); the track takes the class with the most."""
        self.class_scores[class_id] = self.class_scores.get(class_id, 0.0) + weight
        self.class_names[class_id] = class_name
        self.class_id = max(self.class_scores, key=self.class_scores.__getitem__)
        self.class_name = self.class_names[self.class_id]

    def absorb(self, other: Track) -> None:
        """Take OTHER's detections and class votes (the same defect, tracked as another class)."""
        self.observations = sorted(self.observations + other.observations, key=lambda o: o.t_mono)
        self.first_mono = min(self.first_mono, other.first_mono)
        for class_id, score in other.class_scores.items():
            self.class_scores[class_id] = self.class_scores.get(class_id, 0.0) + score
            self.class_names[class_id] = other.class_names[class_id]
        self.class_id = max(self.class_scores, key=self.class_scores.__getitem__)
        self.class_name = self.class_names[self.class_id]
        self.confirmed = self.confirmed or other.confirmed
        if other.best is not None and (self.best is None or (other.best.ground.truncated, -other.best.score)
                                       < (self.best.ground.truncated, -self.best.score)):
            self.best, self.best_crop, self.best_frame = other.best, other.best_crop, other.best_frame

    def ground_of(self, obs: Observation) -> GroundBox:
        """OBS's ground geometry for this track's class: measured as a line for a line class (a crack)."""
        return obs.line if self.class_name.lower() in self.line_classes and obs.line is not None else obs.ground

    @property
    def hits(self) -> int:
        return len(self.observations)

    @property
    def score(self) -> float:
        """The track's confidence: the median of its detection scores."""
        return float(statistics.median(o.score for o in self.observations))

    def recent_median(self) -> float:
        return float(statistics.median(self.recent)) if self.recent else 0.0

    @property
    def whole_hits(self) -> int:
        """Detections whose box is clear of the image border."""
        return sum(1 for o in self.observations if not o.ground.truncated)

    def approach_rate(self, min_driven_m: float) -> float | None:
        """How many metres closer the near edge of the whole views came per metre driven (-1 for a point fixed on
        the road, 0 for one that keeps its distance); None when the vehicle drove less than MIN_DRIVEN_M."""
        whole = [o for o in self.observations if not o.ground.truncated]
        if len(whole) < 2 or whole[-1].odometer_m - whole[0].odometer_m < min_driven_m:
            return None
        driven = np.array([o.odometer_m for o in whole])
        near = np.array([(o.ground.corners[0, 0] + o.ground.corners[1, 0]) / 2 for o in whole])
        return float(np.polyfit(driven, near, 1)[0])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def near_in_image(a: Sequence[float], b: Sequence[float], factor: float) -> bool:
    """Box centres no farther apart than FACTOR times the larger box diagonal."""
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    diag = max(math.hypot(a[2] - a[0], a[3] - a[1]), math.hypot(b[2] - b[0], b[3] - b[1]))
    return math.hypot(dx, dy) <= factor * diag


def class_vote(score: float, bbox: Sequence[float]) -> float:
    """What a detection weighs in its track's class vote: its score times the square root of its box area (module
    doc)."""
    return score * math.sqrt(max(bbox[2] - bbox[0], 1.0) * max(bbox[3] - bbox[1], 1.0))


def boxed_together(a: Track, b: Track) -> bool:
    """Whether tracks A and B boxed one object: in at least two frames both were seen, with boxes overlapping
    DUPLICATE_TRACK_IOU (median)."""
    boxes = {o.t_mono: o.bbox for o in b.observations}
    shared = [iou(o.bbox, boxes[o.t_mono]) for o in a.observations if o.t_mono in boxes]
    return len(shared) >= 2 and statistics.median(shared) >= DUPLICATE_TRACK_IOU


def move(points: np.ndarray, motion: Motion) -> np.ndarray:
    """Ground points fixed on the road, seen from the vehicle after MOTION: shifted back, turned against."""
    shifted = points - [motion.forward_m, 0.0]
    psi = math.radians(motion.yaw_deg)  # the vehicle turned right by psi: the world turns left (CCW) by psi
    c, s = math.cos(psi), math.sin(psi)
    return np.column_stack([shifted[:, 0] * c - shifted[:, 1] * s, shifted[:, 0] * s + shifted[:, 1] * c])


def crop(image: np.ndarray, bbox: Sequence[float], max_px: int, pad: float = 0.15) -> np.ndarray:
    """The box (plus a small margin) cut from IMAGE, scaled so its longest side is at most MAX_PX."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = bbox
    px, py = (x2 - x1) * pad, (y2 - y1) * pad
    c1, r1 = max(0, int(x1 - px)), max(0, int(y1 - py))
    c2, r2 = min(w, math.ceil(x2 + px)), min(h, math.ceil(y2 + py))
    out = image[r1:max(r2, r1 + 1), c1:max(c2, c1 + 1)]
    scale = max_px / max(out.shape[:2])
    if scale < 1:
        out = cv2.resize(out, (max(1, round(out.shape[1] * scale)), max(1, round(out.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    return out.copy()


def confirm_scores(cfg: TrackerConfig, score_threshold: float, thresholds: Sequence[float]) -> dict[int, float]:
    """Each class's track confirmation score: its working threshold (THRESHOLDS, per class id) plus the margin
    the settings put between tracker.confirm_score and detector.score_threshold (0.05 by default)."""
    margin = cfg.confirm_score - score_threshold
    return {c: float(min(1.0, max(0.0, t + margin))) for c, t in enumerate(thresholds)}


@dataclass
class Reported:
    """A defect recently reported, for recognising it when a split track sees it again."""

    class_name: str
    lat: float
    lon: float
    t_mono: float
    seen_from: float = math.inf  # the reporting track's first and last observation (monotonic seconds); the
    seen_to: float = -math.inf   # defaults, an empty span, overlap no other


class RecentReports:
    """The merge window: a track whose defect was reported within merge_radius_m and merge_window_s by an
    earlier track of the same class (a track split by an occlusion or a missed stretch) reports nothing.
    Point defects (not line_classes) seen by tracks in the same frames are two defects however close: a row of
    potholes 2 m apart lost one to the window, depending on each pass's GNSS noise. A crack's boxes coexist all
    along it, so for cracks the window stays as it was."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self._recent: deque[Reported] = deque()

    def seen(self, class_name: str, lat: float, lon: float, t_mono: float, seen_from: float = math.inf,
             seen_to: float = -math.inf) -> bool:
        window, radius = self.cfg.merge_window_s, self.cfg.merge_radius_m
        while self._recent and t_mono - self._recent[0].t_mono > window:
            self._recent.popleft()
        return radius > 0 and any(r.class_name == class_name and distance_m(r.lat, r.lon, lat, lon) <= radius
                                  and (class_name in self.cfg.line_classes  # one crack's pieces coexist
                                       or not (r.seen_from <= seen_to and seen_from <= r.seen_to))
                                  for r in self._recent)

    def add(self, class_name: str, lat: float, lon: float, t_mono: float, seen_from: float = math.inf,
            seen_to: float = -math.inf) -> None:
        self._recent.append(Reported(class_name, lat, lon, t_mono, seen_from, seen_to))


class Tracker:
    """Feed it every processed frame with `step`; it returns the tracks that are ready to become events."""

    def __init__(self, cfg: TrackerConfig, geolocator: Geolocator, thumbnail_px: int = 160,
                 keep_full_frame: bool = False, confirm_scores: dict[int, float] | None = None) -> None:
        """confirm_scores: per class id, the recent median a track needs (classes score on different scales);
        classes not in it use cfg.confirm_score."""
        self.cfg = cfg
        self.line_classes = frozenset(name.strip().lower() for name in cfg.line_classes)
        self.confirm_scores = dict(confirm_scores or {})
        self.geo = geolocator
        self.projector = geolocator.projector
        self.thumbnail_px = thumbnail_px
        self.keep_full_frame = keep_full_frame
        intr = self.projector.intrinsics
        bottom = self.projector.pixel_to_ground(intr.cx, intr.height - 1)
        self._bottom_forward_m = bottom[0] if bottom is not None else 0.0
        self.tracks: list[Track] = []
        self._ids = count(1)
        self._odometer_m = 0.0
        self._gate_scale = 1.0  # coast_gate_factor while the motion is a guess (Motion.coasting)
        self.stats = {"detections": 0, "out_of_range": 0, "tracks": 0, "confirmed": 0, "unconfirmed_ended": 0,
                      "not_fixed": 0, "folded": 0}

    def step(self, t_mono: float, detections: Sequence[Any], motion: Motion = Motion(),
             image: np.ndarray | None = None, pose: Any = None, heading_deg: float | None = None,
             utc: datetime | None = None) -> list[Track]:
        """Advance by one frame; returns confirmed tracks that ended (or aged) in it, to emit."""
        self.stats["detections"] += len(detections)
        self._gate_scale = self.cfg.coast_gate_factor if motion.coasting else 1.0
        self._odometer_m += motion.forward_m
        for track in self.tracks:
            track.pred = move(track.predicted(), motion)
        dets = []
        for det in detections:
            box = self.geo.ground_box((det.x1, det.y1, det.x2, det.y2))
            if box is None or box.range_m > self.cfg.max_range_m:
                self.stats["out_of_range"] += 1
                continue
            dets.append((det, box))
        dets, votes = self._merge_duplicates(dets)

        matched_tracks, matched_dets = self._associate(dets)
        for ti, di in zip(matched_tracks, matched_dets, strict=True):
            det, box = dets[di]
            self._add(self.tracks[ti], det, box, t_mono, image, pose, heading_deg, utc, votes[di])
        for ti, track in enumerate(self.tracks):
            if ti not in matched_tracks:
                track.misses += 1
                self._push(track, 0.0)
        for di, (det, box) in enumerate(dets):
            if di not in matched_dets:
                track = Track(id=next(self._ids), class_id=int(det.class_id), class_name=det.class_name,
                              first_mono=t_mono, line_classes=self.line_classes)
                self.tracks.append(track)
                self.stats["tracks"] += 1
                self._add(track, det, box, t_mono, image, pose, heading_deg, utc, votes[di])

        ready: list[Track] = []
        alive: list[Track] = []
        for track in self.tracks:
            if not track.confirmed and self._seen_enough(track) \
                    and track.recent_median() >= self.confirm_scores.get(track.class_id, self.cfg.confirm_score):
                track.confirmed = True
                self.stats["confirmed"] += 1
        self._fold([t for t in self.tracks if self._ended(t)])
        for track in self.tracks:
            if track.folded:
                continue
            if self._ended(track):
                if track.confirmed and not track.emitted:
                    if self._fixed_on_road(track):
                        ready.append(track)
                elif not track.confirmed:
                    self.stats["unconfirmed_ended"] += 1
                continue
            if track.confirmed and not track.emitted and t_mono - track.first_mono >= self.cfg.emit_after_s \
                    and self._fixed_on_road(track, count_miss=False):
                track.emitted = True
                ready.append(track)
            alive.append(track)
        self.tracks = alive
        return ready

    def flush(self) -> list[Track]:
        """End every track (the drive is over); returns the confirmed ones not emitted yet."""
        self._fold(self.tracks)
        left = [t for t in self.tracks if not t.folded]
        ready = [t for t in left if t.confirmed and not t.emitted and self._fixed_on_road(t)]
        self.stats["unconfirmed_ended"] += sum(1 for t in left if not t.confirmed)
        self.tracks = []
        return ready

    def _fold(self, ended: list[Track]) -> None:
        """Fold each of the ENDED tracks that has a host (_host_for) into it, the shorter ones first, so that of
        two ending together the shorter joins the longer."""
        for track in sorted(ended, key=lambda t: t.hits):
            host = self._host_for(track)
            if host is not None:
                host.absorb(track)
                track.folded = True
                self.stats["folded"] += 1

    def _seen_enough(self, track: Track) -> bool:
        """min_frames whole views, or two whole views confirm_travel_m of driving apart (module doc)."""
        whole = [o for o in track.observations if not o.ground.truncated]
        if len(whole) >= self.cfg.min_frames:
            return True
        travel = self.cfg.confirm_travel_m
        return travel > 0 and len(whole) >= 2 and whole[-1].odometer_m - whole[0].odometer_m >= travel

    def _fixed_on_road(self, track: Track, count_miss: bool = True) -> bool:
        """Whether the track came closer as the vehicle drove, as a defect in the road does (module doc)."""
        if self.cfg.approach_tolerance <= 0:
            return True
        rate = track.approach_rate(self.cfg.approach_min_m)
        if rate is None or abs(rate + 1.0) <= self.cfg.approach_tolerance:
            return True
        if count_miss:
            self.stats["not_fixed"] += 1
            log.debug("track %d (%d frames) kept its distance (%.2f m closer per m driven): no event", track.id,
                      track.hits, -rate)
        return False

    @staticmethod
    def _merge_duplicates(dets: list[tuple[Any, GroundBox]]) -> tuple[list[tuple[Any, GroundBox]], list[list]]:
        """One detection per object: boxes of different classes that overlap (DUPLICATE_IOU) become the
        higher-scored one; returns the kept detections and, per kept one, the other classes' (id, name, score)."""
        order = sorted(range(len(dets)), key=lambda i: -float(dets[i][0].score))
        kept: list[int] = []
        votes: dict[int, list] = {}
        for i in order:
            det = dets[i][0]
            box = (det.x1, det.y1, det.x2, det.y2)
            twin = next((k for k in kept if int(dets[k][0].class_id) != int(det.class_id)
                         and iou((dets[k][0].x1, dets[k][0].y1, dets[k][0].x2, dets[k][0].y2), box) >= DUPLICATE_IOU),
                        None)
            if twin is None:
                kept.append(i)
                votes[i] = []
            else:
                votes[twin].append((int(det.class_id), det.class_name, float(det.score)))
        kept.sort()
        return [dets[i] for i in kept], [votes[i] for i in kept]

    def _host_for(self, track: Track) -> Track | None:
        """A track on the same spot as the ending TRACK (alive, or ending in the same frame), of another class or
        boxing the same object, to fold it into (module doc)."""
        if track.emitted or track.pred is None:
            return None
        centre = track.pred.mean(axis=0)
        gate = (self.cfg.gate_m + self.cfg.gate_per_m * abs(float(centre[0]))) * self._gate_scale
        best, best_d = None, gate
        for other in self.tracks:
            if other is track or other.emitted or other.folded or other.pred is None \
                    or (other.class_id == track.class_id and not boxed_together(track, other)):
                continue
            d = float(np.hypot(*(other.pred.mean(axis=0) - centre)))
            if d <= best_d:
                best, best_d = other, d
        return best

    # -- association ---------------------------------------------------------------------------------------
    def _associate(self, dets: list[tuple[Any, GroundBox]]) -> tuple[list[int], list[int]]:
        if not self.tracks or not dets:
            return [], []
        cost = np.full((len(self.tracks), len(dets)), _NO_PAIR)
        for ti, track in enumerate(self.tracks):
            pred = track.predicted()
            pred_centre = pred.mean(axis=0)
            pred_box = self._pixel_box(pred)
            for di, (det, box) in enumerate(dets):
                switch = 0.0 if int(det.class_id) == track.class_id else CLASS_SWITCH_COST
                gate = (self.cfg.gate_m + self.cfg.gate_per_m * box.range_m) * self._gate_scale
                dist = float(np.hypot(*(pred_centre - [box.forward_m, box.left_m])))
                det_box = (det.x1, det.y1, det.x2, det.y2)
                overlap = iou(pred_box, det_box) if pred_box is not None else 0.0
                if pred_box is not None and not near_in_image(pred_box, det_box, self.cfg.pixel_gate):
                    continue  # close to the bonnet a metre gate spans half the picture; the image says no
                if dist <= gate or (overlap >= self.cfg.iou_min and dist <= 3 * gate):
                    cost[ti, di] = min(dist / gate, 3.0) + (1.0 - overlap) + switch
        rows, cols = linear_sum_assignment(cost)
        keep = cost[rows, cols] < _NO_PAIR
        return rows[keep].tolist(), cols[keep].tolist()

    def _pixel_box(self, ground: np.ndarray) -> tuple[float, float, float, float] | None:
        uv = self.projector.ground_to_pixels(ground)
        if np.isnan(uv).any():
            return None
        return float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max())

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def _add(self, track: Track, det: Any, box: GroundBox, t_mono: float, image: np.ndarray | None, pose: Any,
             heading_deg: float | None, utc: datetime | None, votes: Sequence[tuple[int, str, float]] = ()) -> None:
        bbox = (float(det.x1), float(det.y1), float(det.x2), float(det.y2))
        line = self.geo.line_box(box, image, bbox)
        obs = Observation(t_mono=t_mono, bbox=bbox, score=float(det.score), ground=box, pose=pose,
                          heading_deg=heading_deg, utc=utc, odometer_m=self._odometer_m, line=line)
        track.observations.append(obs)
        track.vote(int(det.class_id), det.class_name, class_vote(obs.score, bbox))
        for class_id, class_name, score in votes:  # the same object's box of another class in this frame
            track.vote(class_id, class_name, class_vote(score, bbox))
        track.misses = 0
        track.pred = box.corners.copy()
        self._push(track, obs.score)
        if track.best is None or (box.truncated, -obs.score) < (track.best.ground.truncated, -track.best.score):
            track.best = obs
            if image is not None:
                track.best_crop = crop(image, bbox, self.thumbnail_px)
                track.best_frame = image if self.keep_full_frame else None

    def _push(self, track: Track, score: float) -> None:
        track.recent.append(score)
        while len(track.recent) > self.cfg.score_window:
            track.recent.popleft()

    def _ended(self, track: Track) -> bool:
        if track.misses > self.cfg.max_misses:
            return True
        if track.misses == 0:
            return False
        # Passed under the camera: even the prediction's far edge is nearer than the image's bottom row sees.
        return float(track.predicted()[:, 0].max()) < self._bottom_forward_m
