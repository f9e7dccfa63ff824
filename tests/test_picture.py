"""A camera that delivers frames but no live picture (frozen stream, covered lens) is named on the health board,
in doctor and on the server; it used to read `ok` everywhere while nothing new was detected."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.camera.picture import PictureWatch
from edge_agent.health import HealthBoard

FPS = 10.0


def road_frames(n: int) -> list[np.ndarray]:
    """Frames that change like a drive's: a textured picture shifted a few pixels each frame."""
    rng = np.random.default_rng(7)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (400, 800, 3), dtype=np.uint8), (9, 9), 0)
    return [np.ascontiguousarray(texture[20:380, 5 * i:5 * i + 640]) for i in range(n)]


def watch(frames: list[np.ndarray], moved_m: float | None, board: HealthBoard | None = None,
          start: float = 100.0) -> tuple[HealthBoard, list[str], int]:
    """Feed FRAMES at FPS through a watch as the capture and pipeline do; the camera state after each frame."""
    board = board or HealthBoard()
    seen, repeats = [], 0
    pictures = PictureWatch(board, after_s=3.0)
    for i, frame in enumerate(frames):
        t = start + i / FPS
        board.frame_arrived(t)
        repeats += pictures.look(frame, t, moved_m)
        seen.append(board.snapshot()["camera"])
    return board, seen, repeats


def test_one_picture_repeated_while_driving_is_frozen_after_the_set_time_and_alive_again_after() -> None:
    live = road_frames(80)
    stuck = [live[0]] * 50  # 5 s of the same picture at 10 fps, 1.4 m driven between frames
    _, seen, repeats = watch(stuck + live[1:11], moved_m=1.4)
    assert repeats == 49
    assert seen[29] == "ok" and seen[31:50] == ["frozen"] * 19  # 3 s of repeats (the first is the original)
    assert seen[-1] == "ok"  # a new picture: alive again


@pytest.mark.parametrize(("fps", "kmh"), [(30, 40), (15, 10), (10, 60)])
def test_a_stuck_camera_is_frozen_at_any_speed_and_frame_rate(fps: int, kmh: int) -> None:
    # Judged frame pair by frame pair (0.5 m each), a stuck 30-fps camera passed as live below 54 km/h.
    picture = road_frames(1)[0]
    moved = kmh / 3.6 / fps
    seconds = max(4.0, 2 * 5.0 / (kmh / 3.6))  # the set time and FROZEN_MIN_M driven, twice over
    board = HealthBoard()
    watch_ = PictureWatch(board, after_s=3.0)
    for i in range(int(seconds * fps)):
        board.frame_arrived(100.0 + i / fps)
        watch_.look(picture, 100.0 + i / fps, moved)
    assert board.snapshot()["camera"] == "frozen"


def test_a_black_picture_is_blank_not_frozen_and_a_crawl_with_a_live_camera_stays_ok() -> None:
    # A lens cap: black frames are identical too, and "power-cycle the camera" was the wrong advice.
    black = [np.zeros((360, 640, 3), np.uint8)] * 50
    assert watch(black, moved_m=1.4)[1][-1] == "blank"
    crawl = road_frames(80)  # 1 m/s at 10 fps, a live picture
    assert set(watch(crawl, moved_m=0.1)[1]) == {"ok"}


def test_a_parked_vehicle_a_stuttering_video_and_a_live_drive_stay_ok() -> None:
    live = road_frames(60)
    assert set(watch([live[0]] * 60, moved_m=0.0)[1]) == {"ok"}  # parked: the same picture is the truth
    assert set(watch([live[0]] * 60, moved_m=None)[1]) == {"ok"}  # no speed known: nothing proves a freeze
    stutter = [f for frame in live[:30] for f in (frame, frame)]  # a constant-rate video that doubles frames
    _, seen, repeats = watch(stutter, moved_m=1.4)
    assert repeats == 30 and set(seen) == {"ok"}
    assert set(watch(live, moved_m=1.4)[1]) == {"ok"}


def test_a_black_or_covered_picture_is_blank_and_the_capture_keeps_its_own_states_first() -> None:
    rng = np.random.default_rng(3)
    covered = [np.clip(12 + rng.normal(0, 3, (360, 640, 3)), 0, 255).astype(np.uint8) for _ in range(40)]
    board, seen, _ = watch(covered, moved_m=1.4)  # sensor noise of std 3: each frame differs, none shows a road
    assert seen[25] == "ok" and seen[-1] == "blank"
    board.update(camera="lost")  # the capture lost the device: that is what the board says
    assert board.snapshot()["camera"] == "lost"
    board.frame_arrived(200.0)  # frames again, still the covered lens
    assert board.snapshot()["camera"] == "blank"
    _, seen, _ = watch(road_frames(2), moved_m=1.4, board=board, start=201.0)  # the watch starts afresh: alive
    assert seen[-1] == "ok"


@pytest.mark.parametrize("state", ["frozen", "blank"])
def test_doctor_and_the_server_name_a_dead_picture(tmp_path: Path, state: str) -> None:
    from edge_agent.doctor.result import Level
    from fleet_server.device_view import HEALTH_WORDS
    from tests.test_doctor_quiet import checks_while_the_agent_runs, running_agent_config

    path, cfg = running_agent_config(tmp_path, tmp_path / "state", camera={"source": "rtsp://cam.local/stream"})
    health = HealthBoard()
    health.update(camera=state, fps=12.0, last_frame_mono=time.monotonic())
    camera = checks_while_the_agent_runs(path, cfg, health, ["camera"])["camera"]
    assert camera.level is Level.RED and state in camera.summary, camera
    words = {"frozen": "shows one picture while the vehicle drives", "blank": "black or flat"}[state]
    assert words in camera.explanation and "ffmpeg -i rtsp://cam.local/stream" in camera.hint, camera
    assert "nothing" in HEALTH_WORDS[("camera", state)]


def test_doctor_probing_a_covered_lens_is_red(tmp_path: Path) -> None:
    """Doctor's own look at the camera (no agent running): a covered lens with sensor noise passed the old
    full-frame check (pixel std 3 > 2) and was amber only for its frame rate."""
    from edge_agent.doctor import run_checks
    from edge_agent.doctor.result import Level
    from tests.test_doctor import FAST, by_name
    from tests.test_doctor_quiet import running_agent_config

    rng = np.random.default_rng(5)
    video = tmp_path / "covered.avi"
    out = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 180))
    for _ in range(20):
        out.write(np.clip(12 + rng.normal(0, 3, (180, 320, 3)), 0, 255).astype(np.uint8))
    out.release()
    path, _ = running_agent_config(tmp_path, tmp_path / "state", camera={"source": str(video)})
    camera = by_name(run_checks(str(path), only=["camera"], options=FAST))["camera"]
    assert camera.level is Level.RED and "black or flat" in camera.explanation, camera
