"""Capture: newest-frame hand-off, drop counting, files at file rate or flat out, lost cameras."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.camera.capture import FrameSource, source_kind
from edge_agent.config.camera import CameraConfig
from edge_agent.health import HealthBoard
from tests.mjpeg import mjpeg_camera


def write_video(path: Path, frames: int, fps: float = 30.0, size: tuple[int, int] = (160, 120)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for k in range(frames):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, : 2 * k % size[0] + 2] = (0, 128, 255)  # a bar that grows frame by frame
        writer.write(img)
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("cap") / "clip.mp4", frames=45, fps=30.0)


def test_source_kinds() -> None:
    assert source_kind("0") == "device"
    assert source_kind("/dev/video2") == "device"
    assert source_kind("rtsp://cam.local:554/stream") == "url"
    assert source_kind("http://10.0.0.5/mjpg") == "url"
    assert source_kind("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink") == "gstreamer"
    assert source_kind("drive/video.mp4") == "file"


def test_file_as_fast_as_possible_delivers_every_frame_in_order(video: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.camera.capture")
    health = HealthBoard()
    cfg = CameraConfig(source=str(video), file_realtime=False)
    got = []
    with FrameSource(cfg, health) as src:
        while True:
            frame = src.latest(timeout=5)
            if frame is None:
                break
            got.append(frame)
            time.sleep(0.002)  # a consumer slower than the decoder must still see every frame
    assert [f.index for f in got] == list(range(45))
    assert src.dropped == 0 and src.finished
    assert all(b.t_mono >= a.t_mono for a, b in itertools.pairwise(got))
    assert got[0].image.shape == (120, 160, 3)
    assert health.snapshot()["camera"] == "ended"
    # `run` on a video file goes quiet when it ends: the log says why (it said nothing).
    assert f"{video}: the video file ended after 45 frames" in caplog.text


def test_file_at_file_rate_drops_frames_for_a_slow_consumer(video: Path) -> None:
    health = HealthBoard()
    cfg = CameraConfig(source=str(video), file_realtime=True)
    got = []
    t0 = time.monotonic()
    with FrameSource(cfg, health) as src:
        while True:
            frame = src.latest(timeout=5)
            if frame is None:
                break
            got.append(frame.index)
            last_grab = frame.t_mono
            time.sleep(0.2)  # a detector at 5 fps on a 30 fps file
    # Paced: no frame is grabbed before its time in the file (a loaded machine can only make it later).
    assert last_grab - t0 >= got[-1] / 30.0, (last_grab - t0, got[-1])
    assert got == sorted(got) and len(got) < 30   # newest frame each time, never a backlog
    assert src.dropped > 10
    assert len(got) + src.dropped == 45           # every frame is either processed or counted as dropped
    assert health.snapshot()["frames_dropped"] == src.dropped


def test_dead_camera_is_a_health_state_and_is_retried() -> None:
    health = HealthBoard()
    cfg = CameraConfig(source="/dev/video-none-here", no_frame_after_s=0.3, reopen_initial_s=0.05,
                       reopen_max_s=0.2)
    with FrameSource(cfg, health) as src:
        assert src.latest(timeout=0.2) is None
        time.sleep(0.3)
        assert src.latest(timeout=0.1) is None
        assert not src.healthy()
        assert health.snapshot()["camera"] in ("lost", "no_frames")
    assert not src.finished  # a live source never "ends"; it is retried until the agent stops


def test_stalled_source_reports_no_frames(tmp_path: Path) -> None:
    health = HealthBoard()
    cfg = CameraConfig(source=str(tmp_path / "appears-later.mp4"), no_frame_after_s=0.2, reopen_initial_s=0.05,
                       reopen_max_s=0.1)
    with FrameSource(cfg, health) as src:
        time.sleep(0.35)
        assert src.latest(timeout=0.05) is None
        assert health.snapshot()["camera"] == "no_frames"
        # the file shows up (a remounted camera, say): the retry loop opens it without a restart
        write_video(tmp_path / "appears-later.mp4", frames=5)
        frame = src.latest(timeout=3)
        assert frame is not None and frame.index == 0
        assert health.snapshot()["camera"] in ("ok", "ended")


def test_stopping_a_live_camera_does_not_call_it_lost() -> None:
    """`run` stopping (SIGTERM at shutdown, ignition-off) closed the stream and the grabber said "lost": every
    cleanly stopped van's last status showed a camera fault on the fleet's dashboard."""
    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(2).integers(0, 255, (120, 160, 3)).astype(np.uint8))
    assert ok
    health = HealthBoard()
    with mjpeg_camera(jpeg, fps=10, frames=600) as url:
        src = FrameSource(CameraConfig(source=url), health).start()
        try:
            assert src.latest(timeout=20) is not None
            assert health.snapshot()["camera"] == "ok"
        finally:
            src.stop()
        assert health.snapshot()["camera"] == "ok"


def test_a_camera_that_comes_back_is_reopened_at_once_not_after_the_backoff(monkeypatch) -> None:
    """A replugged USB camera (its /dev node back) and an IP camera back on its port were reopened only when the
    backoff ran out, up to reopen_max_s (30 s) later: 600 m of road unseen at 20 m/s."""
    import uuid

    import edge_agent.camera.capture as capture

    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm to stand in for a camera's device node")
    node = Path(f"/dev/shm/roadmon-cam-{uuid.uuid4().hex}")
    opens: list[float] = []
    real_open = capture.open_capture
    monkeypatch.setattr(capture, "open_capture", lambda cfg, *a: opens.append(time.monotonic()) or real_open(cfg, *a))
    cfg = CameraConfig(source=str(node), reopen_initial_s=30, reopen_max_s=60)
    with FrameSource(cfg):
        deadline = time.monotonic() + 5
        while not opens and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(opens) == 1  # the first attempt failed: no such node
        time.sleep(1.0)
        assert len(opens) == 1  # a camera still gone is not hammered
        node.touch()  # plugged in again (a plain file: the open fails again, but it is tried now)
        try:
            deadline = time.monotonic() + 5
            while len(opens) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(opens) == 2, "the node came back but the reopen waited for the 30-s backoff"
        finally:
            node.unlink()


def test_an_ip_camera_back_on_its_port_is_reopened_at_once() -> None:
    import socket

    _, jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 128, np.uint8))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = CameraConfig(source=f"http://127.0.0.1:{port}/video.mjpg", reopen_initial_s=30, reopen_max_s=60)
    with FrameSource(cfg) as src:
        time.sleep(1.0)  # refused: the source waits out its first backoff
        with mjpeg_camera(jpeg, fps=10, frames=600, port=port):
            assert src.latest(timeout=8) is not None, "the IP camera was back but not reopened"
