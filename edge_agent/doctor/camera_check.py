"""Does the camera open and deliver frames, how fast, and do the frames show anything?"""

from __future__ import annotations

import time

from edge_agent.camera.picture import BLANK, FROZEN, is_blank, thumbnail
from edge_agent.doctor.agent_view import AgentView, running_agent
from edge_agent.doctor.result import CheckResult, Context, Level
from roadmon_contract.status import SPARSE_FRAMES_M, sparse_frames_fix, sparse_frames_words


def _picture_faults(source: str) -> dict[str, tuple[str, str]]:
    """What each verdict on the picture (edge_agent.camera.picture) means, and what to do."""
    look = f"save a frame and look at it: `ffmpeg -i {source} -frames:v 1 frame.jpg` (a USB camera: agent stopped)"
    return {
        FROZEN: ("the camera shows one picture while the vehicle drives: frames arrive, nothing new is detected "
                 "(a stuck stream, or a camera that sees nothing that changes: knocked up towards the sky)",
                 f"{look}; a road in it: the stream is stuck, power-cycle the camera (an IP camera: reboot it) and "
                 "`sudo systemctl restart edge-agent`; no road: re-aim the mount, then `edge-agent calibrate check`"),
        BLANK: ("the camera's picture is black or flat: a lens cap, a covered or dirty lens, no light, or a dead "
                "sensor", look),
    }


def _open_hint(kind: str, source: str) -> str:
    if kind == "device":
        return ("check the cable and `v4l2-ctl --list-devices`; the user needs the 'video' group; a running agent "
                "holds the camera: `sudo systemctl stop edge-agent` before this check")
    if kind == "file":
        return f"the video file {source} does not exist or is not a format FFmpeg reads"
    if kind == "url":
        return "check the camera's address, credentials and network (`ffprobe URL` shows the error)"
    return "check the GStreamer pipeline with `gst-launch-1.0`; OpenCV must be built with GStreamer"


def _as_the_agent_sees_it(agent: AgentView, source: str, mirror_pass: bool) -> CheckResult:
    """The camera as the running agent reads it (a device streams to one reader: opening it here fails)."""
    state = agent.health("camera")
    fps, step = agent.status.get("fps"), agent.status.get("m_per_frame")
    data = {"source": source, "held_by_pid": agent.pid, "state": state, "fps": fps, "m_per_frame": step}
    summary = f"{source}, held by the running agent (pid {agent.pid}): {state}" + (
        f", {fps:.1f} fps through the detector" if state == "ok" and isinstance(fps, int | float) else "")
    if state == "ok" and (sparse := _too_sparse(agent, summary, data, mirror_pass)) is not None:
        return sparse
    if state == "ok":
        return CheckResult("camera", Level.GREEN, summary, data=data)
    if state == "starting":
        return CheckResult("camera", Level.YELLOW, summary, "the agent opened the camera; no frame yet",
                           "run again in a minute", data)
    why, fix = _picture_faults(source).get(str(state), (
        "the agent gets no frames from the camera: it detects nothing",
        "`journalctl -u edge-agent | grep -i camera`; check the cable and `v4l2-ctl --list-devices`"))
    return CheckResult("camera", Level.RED, summary, why, fix, data)


def _too_sparse(agent: AgentView | None, summary: str, data: dict, mirror_pass: bool) -> CheckResult | None:
    """Yellow when the running agent processes frames too far apart for the tracker, however well the camera
    streams (an IP camera at 20 fps read green while the agent looked at a frame every 12 m)."""
    step = None if agent is None else agent.status.get("m_per_frame")
    if agent is None or not isinstance(step, int | float) or step <= SPARSE_FRAMES_M:
        return None
    fps, ms = agent.status.get("fps"), agent.status.get("inference_ms")
    rate = (f"{fps:.1f} frames a second through the detector" if isinstance(fps, int | float) else "") + (
        f", {ms:.0f} ms each" if isinstance(ms, int | float) else "")
    return CheckResult("camera", Level.YELLOW, f"{summary}; the running agent: {sparse_frames_words(step)}",
                       f"beyond {SPARSE_FRAMES_M:g} m between processed frames a defect is seen in fewer than two "
                       f"frames and is not reported" + (f" ({rate})" if rate else ""),
                       sparse_frames_fix(fps, ms, mirror_pass),
                       data | {"m_per_frame": step, "agent_fps": fps, "inference_ms": ms})


def check_camera(ctx: Context) -> CheckResult:
    from edge_agent.camera.capture import open_capture, source_kind

    assert ctx.cfg is not None
    cam = ctx.cfg.camera
    kind = source_kind(cam.source)
    agent = running_agent(ctx)
    # A device streams to one reader, so doctor asks the agent; and only the agent, watching while the vehicle
    # drives, can tell a frozen stream (a URL camera's too) from a still scene.
    if agent is not None and (kind in ("device", "gstreamer") or agent.health("camera") in (FROZEN, BLANK)):
        return _as_the_agent_sees_it(agent, cam.source, ctx.cfg.detector.mirror_pass)
    opts = ctx.options
    cap = open_capture(cam, timeout_s=ctx.options.camera_seconds)
    try:
        if not cap.isOpened():
            return CheckResult("camera", Level.RED, f"cannot open {kind} source {cam.source!r}",
                               "without frames the agent detects nothing", _open_hint(kind, cam.source),
                               {"source": cam.source, "kind": kind})
        stamps: list[float] = []
        last = None
        deadline = time.monotonic() + opts.camera_seconds
        while len(stamps) < opts.camera_frames and time.monotonic() < deadline:
            ok, frame = cap.read()
            if not ok:
                if kind == "file":
                    break
                continue
            stamps.append(time.monotonic())
            last = frame
        nominal = cap.get(5) or None  # CAP_PROP_FPS
    finally:
        cap.release()

    data = {"source": cam.source, "kind": kind, "frames": len(stamps), "nominal_fps": nominal}
    if last is None:
        return CheckResult("camera", Level.RED, f"{kind} {cam.source!r} opened but gave no frame in "
                           f"{opts.camera_seconds:.0f} s", "the camera is there but not streaming",
                           _open_hint(kind, cam.source), data)
    height, width = last.shape[:2]
    ctx.frame_shape = (height, width)
    fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
    thumb = thumbnail(last)
    std = float(thumb.std())
    data.update(width=width, height=height, fps=round(fps, 2) if fps else None, grey_std=round(std, 2))
    summary = f"{width}x{height}, {len(stamps)} frames" + (f" at {fps:.1f} fps" if fps else "")
    if kind == "file":
        summary += f" (video file, nominal {nominal:.1f} fps)" if nominal else " (video file)"
    if is_blank(thumb):
        why, fix = _picture_faults(cam.source)[BLANK]
        return CheckResult("camera", Level.RED, summary + f"; the picture is uniform (grey std {std:.1f})", why, fix,
                           data)
    # A device's own frame rate; a URL's "nominal" rate is FFmpeg's default 25 for MJPEG, not the camera's.
    wanted = cam.fps or (nominal if kind not in ("file", "url") else None)
    if kind != "file" and fps and wanted and fps < 0.5 * wanted:
        return CheckResult("camera", Level.YELLOW, summary + f", below half the expected {wanted:.0f} fps",
                           "a slow camera means fewer looks at each defect",
                           "check the USB bus (USB 3 port), exposure (long exposure in the dark caps fps) and "
                           "camera.width/height/fps", data)
    sparse = _too_sparse(agent, summary, data, ctx.cfg.detector.mirror_pass)
    return sparse or CheckResult("camera", Level.GREEN, summary, data=data)
