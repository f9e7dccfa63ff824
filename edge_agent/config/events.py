"""Event and coverage settings (owned by the events / coverage modules)."""

from __future__ import annotations

from pydantic import Field

from roadmon_contract.config_base import Section


class EventsConfig(Section):
    thumbnail: bool = Field(True, description="Attach a small JPEG crop of the defect (only the defect) to each event")
    thumbnail_max_px: int = Field(160, ge=16, le=1024, description="Longest side of the thumbnail crop, pixels")
    thumbnail_quality: int = Field(80, ge=10, le=100, description="JPEG quality of thumbnails (and full frames)")
    full_frame: bool = Field(False,
                             description="Also attach the whole best frame (privacy: shows people and plates); it "
                                         "stays in the box's queue for a local look: the fleet server does not "
                                         "store it")
    full_frame_max_px: int = Field(1280, ge=64, le=4096, description="Longest side of an attached full frame")
    class_weights: dict[str, float] = Field(
        default_factory=lambda: {"pothole": 1.0, "crack": 0.6},
        description="Severity weight per class, 0-1 (classes not listed use default_class_weight)")
    default_class_weight: float = Field(0.5, ge=0, le=1, description="Severity weight of classes not listed")
    severe_area_m2: float = Field(1.0, gt=0, le=100,
                                  description="Defect area (m²) at which the size part of severity reaches 1; "
                                              "at 1.0 the size part is the defect's size in metres "
                                              "(sqrt of its area), so 0.3-1.2 m potholes spread over 0.3-1")
    max_pose_h_std_m: float = Field(25.0, gt=0, le=100000,
                                    description="A frame whose vehicle position is more uncertain than this "
                                                "(1-sigma, m; about 4-5 s of dead reckoning after the last fix) "
                                                "does not place its defect; 'stale' positions never do")
    hold_for_fix_s: float = Field(60.0, ge=0, le=600,
                                  description="A finished track whose frames fall in a GNSS gap (a tunnel, a cold "
                                              "start) or before the receiver's first date waits up to this long "
                                              "for the first fix after it, which places it from both sides of "
                                              "the gap and dates it by GNSS time; 0 places it at once")
    projection_sigma_m: float = Field(0.15, ge=0, le=10,
                                      description="Projection error at zero range (pixel noise, box fit), metres")
    pitch_sigma_deg: float = Field(0.5, ge=0, le=10,
                                   description="Uncertainty of the camera pitch (road slope, vehicle pitch), "
                                               "which makes the projection error grow with range²")
    coverage_point_s: float = Field(2.0, gt=0, le=600, description="Seconds between points of the coverage line")
    coverage_record_s: float = Field(60.0, gt=0, le=3600, description="Longest stretch in one coverage record, s")
    coverage_footprint_m: float = Field(20.0, gt=0, le=200,
                                        description="Range up to which the camera footprint counts as covered, m")
