"""What figures of the device status (status.schema.json) mean, for the agent that writes them and the server
that judges them."""

# Metres driven per processed frame (`m_per_frame`) beyond which a pothole the model finds from ~15 m, and that
# passes under the bonnet at ~4 m, is often boxed in fewer than two frames: a box too slow for its speed. A
# simulated drive (seed 1, 7 potholes) processed a frame every 5.1 / 6.6 / 7.9 m gave 7 / 4 / 3 pothole events.
SPARSE_FRAMES_M = 6.0
# Metres driven with the detector looking and no event (`counters.driven_m_since_event`) past which doctor and
# `status` are amber: on roads with any damage a working box finds something every few km (the fleet simulator's
# city: 2 defects a km), a smeared windscreen or a lens out of focus finds nothing; a new road can be sound longer.
QUIET_DRIVE_M = 20_000


def sparse_frames_fix(fps: float | None, inference_ms: float | None, mirror_pass: bool | None = None) -> str:
    """What to change on a box whose processed frames are too far apart, for the technician (doctor, the agent's
    log): the camera's rate when the detector waits for frames (it takes under half the time between them), else
    the detector's time. A camera sending more frames than the detector looks at costs their decoding too: at
    20 % of a core, 1280x720 at 20 fps left the detector 4 frames a second, at 10 fps 6."""
    if (isinstance(fps, int | float) and fps > 0 and isinstance(inference_ms, int | float)
            and inference_ms < 0.5 * 1000 / fps):
        return (f"the detector takes {inference_ms:.0f} ms of the {1000 / fps:.0f} ms between frames: the camera "
                "gives too few; raise camera.fps (and check the camera's own rate: exposure, USB bus)")
    steps = ["a faster detector (`edge-agent model bench`: INT8, detector.threads, a smaller input)"]
    if mirror_pass is not False:
        steps.append("`detector.mirror_pass = false`" + (" (it doubles the detector's time)" if mirror_pass else ""))
    steps.append("camera.fps near the rate the detector keeps (frames it cannot look at are still decoded)")
    return ", ".join(steps[:-1]) + ", or " + steps[-1]


def sparse_frames_words(step_m: float) -> str:
    """A box that processes a frame every STEP_M metres (beyond SPARSE_FRAMES_M), in words."""
    return f"a frame every {step_m:.1f} m while driving: too slow for its speed, defects are missed"

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
    ("gnss", "frozen"): "GNSS receiver repeats one fix (its output is stuck): defects cannot be placed",
    ("detector", "failed"): "detector fails: nothing is detected",
    ("outbox", "full"): "outbox full (disk): new findings are refused",
    ("outbox", "degraded"): "outbox degraded (disk errors)",
}


def mount_moved_words(mount: object) -> str | None:
    """The status's `mount` (edge_agent.perception.mount_watch) in words when the road says the camera aims
    elsewhere than its calibration: the server's device problem, `edge-agent status` and doctor; None while it is
    fine, unclear or not judged yet. A wrong focal length shows the same way as a moved camera (an outside test
    configured an 80° lens on a 70° camera and read pitch 16.6° for 14°), so the words name both."""
    if not isinstance(mount, dict) or mount.get("state") != "moved":
        return None
    fix = ("the camera was moved, or its lens calibration is wrong: `edge-agent calibrate mount` on a straight "
           "marked road (and `calibrate intrinsics` if the lens was never calibrated)")
    if mount.get("height_m") is not None:
        fix += "; the height is read against calibration.mount_lane_width_m: check that width too"
    try:
        road = [f"pitch {float(mount['pitch_deg']):.1f}°", f"yaw {float(mount['yaw_deg']):.1f}°"]
        config = [f"{float(mount['config_pitch_deg']):.1f}°", f"{float(mount['config_yaw_deg']):.1f}°"]
        if isinstance(mount.get("height_m"), int | float) and isinstance(mount.get("config_height_m"), int | float):
            road.append(f"height {float(mount['height_m']):.2f} m")
            config.append(f"{float(mount['config_height_m']):.2f} m")
    except (KeyError, TypeError, ValueError):
        return f"camera aim off: defects are misplaced; {fix}"
    off, ahead = mount.get("off_m"), mount.get("ahead_m")
    ahead = float(ahead) if isinstance(ahead, int | float) and 0 < ahead < 1000 else 15.0
    where = (f"a defect {ahead:.0f} m ahead is placed {float(off):.1f} m off"
             if isinstance(off, int | float) else "defects ahead are misplaced")
    return (f"camera aim off: the lane markings show {_listed(road)}, the config says {_listed(config)}; {where}; "
            f"{fix}")


def _listed(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1]
