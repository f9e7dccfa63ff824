"""Camera calibration: intrinsics from a checkerboard, mounting extrinsics, image-to-ground projection.

- `camera`: `Intrinsics` and `Mount` (the camera model).
- `projector`: `GroundProjector`, pixel <-> (forward, left) metres on a flat road, footprint, uncertainty.
- `config`: `projector_from_config(cfg.calibration)` and the intrinsics file format.
- `checkerboard`: intrinsics from checkerboard photos with cv2.calibrateCamera.
- `grid`: a projected metre grid drawn over an image, to check a mount by eye.
- `intrinsics_quality`: what a set of checkerboard photos could not pin down.
- `mount_fit`: pitch, yaw and height from the lane markings of road frames.
"""

from calibration.camera import Intrinsics, Mount
from calibration.config import CalibrationError, projector_from_config
from calibration.projector import GroundProjector

__all__ = ["CalibrationError", "GroundProjector", "Intrinsics", "Mount", "projector_from_config"]
