"""What figures of the device status (status.schema.json) mean, for the agent that writes them and the server
that judges them."""

# Metres driven per processed frame (`m_per_frame`) beyond which a pothole the model finds from ~15 m, and that
# passes under the bonnet at ~4 m, is often boxed in fewer than two frames: a box too slow for its speed. A
# simulated drive (seed 1, 7 potholes) processed a frame every 5.1 / 6.6 / 7.9 m gave 7 / 4 / 3 pothole events.
SPARSE_FRAMES_M = 6.0

# What a part of the box's health board says when it is not fine, in words: the server's device problems (for
# someone who cannot walk to the van) and `edge-agent status` (for the technician beside it).
HEALTH_WORDS = {
    ("camera", "no_frames"): "camera gives no frames: nothing is detected",
    ("camera", "lost"): "camera lost: nothing is detected",
    ("camera", "frozen"): "camera shows one picture while driving (stream stuck, or aimed off the road): nothing "
                          "new is detected",
    ("camera", "blank"): "camera picture black or flat (lens covered, no light): nothing is detected",
    ("gnss", "lost"): "GNSS receiver sends nothing usable: defects cannot be placed",
    ("gnss", "no_fix"): "GNSS has no fix: defects cannot be placed",
    ("gnss", "stale"): "GNSS fix is stale: defects cannot be placed",
    ("detector", "failed"): "detector fails: nothing is detected",
    ("outbox", "full"): "outbox full (disk): new findings are refused",
    ("outbox", "degraded"): "outbox degraded (disk errors)",
}


def mount_moved_words(mount: object) -> str | None:
    """The status's `mount` (edge_agent.perception.mount_watch) in words when the road says the camera moved: the
    server's device problem and `edge-agent status`; None while it is fine, unclear or not judged yet."""
    if not isinstance(mount, dict) or mount.get("state") != "moved":
        return None
    try:
        pitch, yaw = float(mount["pitch_deg"]), float(mount["yaw_deg"])
        config_pitch, config_yaw = float(mount["config_pitch_deg"]), float(mount["config_yaw_deg"])
    except (KeyError, TypeError, ValueError):
        return "camera mount moved: defects are misplaced (edge-agent calibrate mount)"
    off = mount.get("off_m")
    where = (f"a defect {float(mount.get('ahead_m') or 15):.0f} m ahead is placed {float(off):.1f} m off"
             if isinstance(off, int | float) else "defects ahead are misplaced")
    return (f"camera mount moved: the lane markings show pitch {pitch:.1f}° and yaw {yaw:.1f}°, the config says "
            f"{config_pitch:.1f}° and {config_yaw:.1f}°; {where} (edge-agent calibrate mount)")
