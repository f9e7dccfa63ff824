"""Camera intrinsics and mounting (owned by the calibration package).

Intrinsics come either inline (fx/fy/cx/cy at width x height, plus distortion) or from the file that
`edge-agent calibrate intrinsics` writes (`intrinsics_file`); when neither gives fx, an ideal lens with
`hfov_deg` is assumed. The mount is always inline. `calibration.projector_from_config` turns this into a
`GroundProjector`.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from roadmon_contract.config_base import Section


class CalibrationConfig(Section):
    intrinsics_file: str = Field("", description="TOML/JSON written by `edge-agent calibrate intrinsics`; "
                                                  "when set it replaces the inline fx/fy/cx/cy/width/height/dist; "
                                                  "a relative path is taken beside the config file")
    width: int = Field(1280, gt=0, le=16384, description="Image width the intrinsics belong to, pixels")
    height: int = Field(720, gt=0, le=16384, description="Image height the intrinsics belong to, pixels")
    fx: float = Field(0.0, ge=0, description="Focal length in x, pixels (0 = derive from hfov_deg)")
    fy: float = Field(0.0, ge=0, description="Focal length in y, pixels (0 = same as fx)")
    cx: float | None = Field(None, description="Principal point x, pixels (unset = image centre)")
    cy: float | None = Field(None, description="Principal point y, pixels (unset = image centre)")
    dist: list[float] = Field(default_factory=list, max_length=14,
                              description="OpenCV distortion coefficients k1, k2, p1, p2[, k3...]; empty = none")
    hfov_deg: float = Field(70.0, gt=10, lt=170, description="Horizontal field of view used when fx is 0, degrees")
    height_m: float = Field(1.4, gt=0, le=5, description="Camera height above the road, metres")
    pitch_deg: float = Field(10.0, ge=-10, le=60, description="Downward tilt of the optical axis, degrees")
    roll_deg: float = Field(0.0, ge=-30, le=30, description="Rotation about the forward axis, degrees, "
                                                            "positive = camera's right side down")
    yaw_deg: float = Field(0.0, ge=-45, le=45,
                           description="Optical axis turned left of the vehicle's straight ahead, degrees")
    lateral_m: float = Field(0.0, ge=-3, le=3, description="Camera left of the vehicle's centre line, metres")
    mount_check_every_s: float = Field(30.0, ge=0, le=3600,
                                       description="While driving straight, look this often for where the lane "
                                                   "markings meet, to notice a knocked or re-aimed camera, seconds "
                                                   "(0 = never)")
    mount_check_frames: int = Field(10, ge=5, le=100, description="Frames whose median vanishing point judges "
                                                                  "the mount (the most recent ones)")
    mount_lane_width_m: float = Field(0.0, ge=0, le=6,
                                      description="Width of the lanes this vehicle mostly drives (between the "
                                                  "middles of their lines), metres: the mount check then judges "
                                                  "the camera height too; 0 = pitch and yaw only (a guessed width "
                                                  "0.5 m off misjudges the height by 15 %)")
    mount_moved_m: float = Field(1.5, gt=0, le=20,
                                 description="Report the mount as moved when the markings' vanishing point puts a "
                                             "defect 15 m ahead this far from where the configured mount places "
                                             "it, metres")

    @model_validator(mode="after")
    def _principal_point_inside(self) -> CalibrationConfig:
        if self.cx is not None and not 0 <= self.cx <= self.width:
            raise ValueError(f"cx {self.cx} lies outside the {self.width}-pixel-wide image")
        if self.cy is not None and not 0 <= self.cy <= self.height:
            raise ValueError(f"cy {self.cy} lies outside the {self.height}-pixel-high image")
        return self
