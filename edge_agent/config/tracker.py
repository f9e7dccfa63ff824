"""Tracker settings (owned by the tracker module): when a run of detections is one defect."""

from __future__ import annotations

from pydantic import Field

from roadmon_contract.config_base import Section


class TrackerConfig(Section):
    min_frames: int = Field(3, ge=1, description="Frames a track needs before it may become an event; only boxes "
                                                  "clear of the image border count (a cut box shows an unknown part)")
    confirm_travel_m: float = Field(
        2.5, ge=0, le=50,
        description="Two whole views this many metres of driving apart confirm a track as min_frames views do: a "
                    "box that processes a frame every 3-6 m (a Pi at highway speed) sees a defect in 2-3 frames "
                    "(0 turns this off)")
    score_window: int = Field(5, ge=1, le=100,
                              description="Recent frames whose median score (misses count as 0) decides a track")
    confirm_score: float = Field(0.4, ge=0, le=1,
                                 description="Median of the recent scores a track must reach to become an event")
    max_misses: int = Field(8, ge=0, le=1000,
                            description="Frames a track may go unseen (occlusion, missed detection) before it ends")
    iou_min: float = Field(0.1, ge=0, le=1,
                           description="Least IoU with a track's motion-predicted box for a detection to join it")
    gate_m: float = Field(1.5, gt=0, le=50,
                          description="Ground distance a detection may be from a track's predicted point, metres")
    gate_per_m: float = Field(0.15, ge=0, le=5,
                              description="Extra gate per metre of range (projection error grows with distance)")
    coast_gate_factor: float = Field(2.0, ge=1, le=10,
                                     description="The ground gates are this many times wider while the position is "
                                                 "predicted without fixes (a tunnel): the vehicle's speed and turns "
                                                 "that move the tracks' predictions are guesses then")
    pixel_gate: float = Field(1.0, gt=0, le=20,
                              description="A detection's box centre must be within this many box diagonals of the "
                                          "track's predicted box (near the bonnet a metre gate spans the picture)")
    approach_min_m: float = Field(
        1.0, gt=0, le=100,
        description="Distance the vehicle must drive while a track is seen (whole) before its approach is judged: "
                    "its near edge must come closer by about the distance driven, as a point fixed on the road does")
    approach_tolerance: float = Field(
        0.0, ge=0, le=10,
        description="How far the near edge's metres-closer-per-metre-driven may be from 1 (a track at 0 kept its "
                    "distance: not a defect in the road); 0 turns the check off. 0.5 separates them with a wide "
                    "margin on simulated drives (defects: 0.75-1.25)")
    merge_radius_m: float = Field(
        2.0, ge=0, le=50,
        description="An ending track this close to an event of the same class from the last merge_window_s "
                    "is the same defect seen again, not a new event (0 turns this off)")
    merge_window_s: float = Field(20.0, ge=0, le=3600, description="How far back merge_radius_m looks, seconds")
    emit_after_s: float = Field(30.0, gt=0, le=3600,
                                description="A confirmed track still in view after this many seconds (a parked "
                                            "vehicle) becomes its event now rather than when it ends")
    heading_min_speed_mps: float = Field(
        2.5, ge=0, le=50,
        description="Below this speed the filtered heading is mostly GNSS noise: the last heading from above it "
                    "is held (a stopped vehicle does not turn)")
    line_classes: list[str] = Field(
        default_factory=lambda: ["crack"],
        description="Classes measured as lines along their long axis (length, width, orientation; the server "
                    "merges their sightings along the line) rather than as blobs; case does not matter. A model "
                    "with its own names lists its line-shaped ones here (e.g. \"longitudinal crack\"; an "
                    "alligator-cracked area is a blob)")
    max_range_m: float = Field(25.0, gt=1, le=200,
                               description="Detections projecting farther than this (or above the horizon) are "
                                           "too uncertain to place and are ignored")
