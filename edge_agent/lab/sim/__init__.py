"""The drive simulator: a synthetic road seen through the calibrated camera, with known defects and a GNSS log.

- `surface`: asphalt, markings, verge, shadows as functions of road coordinates (s along, d across).
- `paint`: pothole and crack sprites drawn on the road in perspective.
- `render`: whole frames, and `random_training_scene` for the detector's training data.
- `route`, `gnss_noise`, `nmea_writer`, `drive`: the drive itself and the files it writes.
- `truth_detector`: a drive's own boxes as a perfect detector, to judge what comes after the model.
"""
