"""What figures of the device status (status.schema.json) mean, for the agent that writes them and the server
that judges them."""

# Metres driven per processed frame (`m_per_frame`) beyond which a pothole the model finds from ~15 m, and that
# passes under the bonnet at ~4 m, is often boxed in fewer than two frames: a box too slow for its speed. A
# simulated drive (seed 1, 7 potholes) processed a frame every 5.1 / 6.6 / 7.9 m gave 7 / 4 / 3 pothole events.
SPARSE_FRAMES_M = 6.0
