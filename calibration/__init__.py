"""Camera calibration: intrinsics from a checkerboard, mounting extrinsics, image-to-ground projection."""
