"""Does the calibration load, and what road does the camera see with it? It runs the agent's own start-up step
(runtime.assemble.load_projector), so doctor is red exactly when `edge-agent run` refuses to start."""

from __future__ import annotations

from calibration.projector import GroundProjector
from edge_agent.config.calibration import CalibrationConfig
from edge_agent.doctor.result import CheckResult, Context, Level
from edge_agent.link.heartbeat import ago_text
from roadmon_contract.status import mount_moved_words


def check_calibration(ctx: Context) -> CheckResult:
    from edge_agent.perception.coverage import footprint_summary
    from edge_agent.runtime.assemble import load_projector

    assert ctx.cfg is not None
    cal = ctx.cfg.calibration
    source = f"intrinsics file {cal.intrinsics_file}" if cal.intrinsics_file else "inline calibration"
    data: dict = {"source": source}
    try:
        projector = load_projector(ctx.cfg)
    except (OSError, ValueError) as exc:  # what `run` reports as "cannot start"
        return CheckResult("calibration", Level.RED, f"cannot start with this calibration: {exc}",
                           "the agent refuses to start without a usable calibration",
                           "write the file with `edge-agent calibrate intrinsics`, fix calibration.intrinsics_file, "
                           "or empty it to use the inline width/height/fx/hfov_deg", data)
    intr, mount = projector.intrinsics, projector.mount
    seen = footprint_summary(projector.footprint(ctx.cfg.events.coverage_footprint_m), mount.lateral_m)
    data.update(width=intr.width, height=intr.height, fx=round(intr.fx, 1), footprint=seen)
    summary = (f"{source}: {intr.width}x{intr.height}, fx {intr.fx:.0f} px, camera {mount.height_m:.2f} m high, "
               f"pitched {mount.pitch_deg:.1f} deg down")
    if not seen:
        return CheckResult("calibration", Level.YELLOW, summary + "; the camera sees no road",
                           "no pixel of the image meets the road: nothing can be placed on the map",
                           "check calibration.pitch_deg and height_m (`edge-agent calibrate check` draws the "
                           "ground grid over a photo)", data)
    summary += f"; sees the road {seen['near']:.1f}-{seen['far']:.1f} m ahead"
    if ctx.frame_shape is not None:
        height, width = ctx.frame_shape
        if intr.aspect_mismatch(width, height):
            return CheckResult("calibration", Level.YELLOW,
                               summary + f"; the camera delivers {width}x{height}, another shape",
                               "intrinsics are scaled to the camera's resolution, which is only right for the "
                               "same aspect ratio: positions will be off",
                               "set camera.width/height to the calibrated shape, or calibrate at this resolution",
                               data)
    if cal.intrinsics_file:
        from calibration.config import intrinsics_file_problems

        problems = intrinsics_file_problems(cal.intrinsics_file)
        if problems:
            data["problems"] = problems
            return CheckResult("calibration", Level.YELLOW, summary + "; the intrinsics fit is doubtful",
                               "; ".join(problems) + ": positions on the map may be off by metres",
                               "take the checkerboard photos again as docs/calibration.md says, and rerun "
                               "`edge-agent calibrate intrinsics`", data)
    guessed = never_measured(cal)
    if guessed:
        data["defaults"] = guessed
        return CheckResult("calibration", Level.YELLOW, summary + f"; {', '.join(guessed)}: the built-in defaults",
                           "this box's camera was never calibrated: the defaults are a guess, and a degree of pitch "
                           "moves a pothole a metre or more on the map",
                           "`edge-agent calibrate intrinsics` (checkerboard photos), then `edge-agent calibrate "
                           "mount` on a straight marked road, and set what they give (docs/calibration.md)", data)
    moved = _moved_on_the_road(ctx, projector)
    if moved is not None:
        data["mount"] = moved
        return CheckResult("calibration", Level.YELLOW, summary + "; the lane markings say the camera aims elsewhere",
                           f"{mount_moved_words(moved)} (judged {ago_text(moved.get('at'))})",
                           "on a straight marked road run `edge-agent calibrate mount` and set what it gives; when "
                           "the lens was never calibrated, `calibrate intrinsics` first; with "
                           "calibration.mount_lane_width_m set, check that width too (docs/calibration.md)", data)
    return CheckResult("calibration", Level.GREEN, summary, data=data)


def never_measured(cal: CalibrationConfig) -> list[str]:
    """What of the calibration is the built-in default rather than a value someone set: the lens (no intrinsics
    file, no fx or field of view) and the mount's height and pitch. A fresh install's doctor read "inline
    calibration: ... OK" in green (an outside install on a Pi)."""
    given = cal.model_fields_set
    guessed = [] if cal.intrinsics_file or {"fx", "hfov_deg"} & given else ["lens (fx, hfov_deg)"]
    return guessed + [f"camera {key}" for key in ("height_m", "pitch_deg") if key not in given]


def _moved_on_the_road(ctx: Context, projector: GroundProjector) -> dict | None:
    """The mount the agent's kept frames show, judged against this config (perception.mount_watch), when the
    camera aims elsewhere: with the agent running or stopped (a technician stops the service before working on
    the van), with the uplink or without."""
    from edge_agent.perception.mount_watch import mount_file_of, reading_from_file

    assert ctx.cfg is not None
    reading = reading_from_file(mount_file_of(ctx.cfg.outbox_path), ctx.cfg.calibration, projector)
    return reading if mount_moved_words(reading) is not None else None
