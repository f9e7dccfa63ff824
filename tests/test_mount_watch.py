"""The agent notices a camera whose aim no longer matches its calibration (edge_agent.perception.mount_watch): on
frames whose lane markings are drawn by a known mount, on real survey frames, and through the status to the
server's device problems, `edge-agent status` and doctor."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from calibration.camera import Intrinsics, Mount
from calibration.projector import GroundProjector
from edge_agent.cli import app
from edge_agent.config import AgentConfig
from edge_agent.config.calibration import CalibrationConfig
from edge_agent.health import HealthBoard
from edge_agent.link.heartbeat import build_status, status_file_of, write_status_file
from edge_agent.perception.mount_watch import MountWatch
from fleet_server.device_view import coded_problems
from roadmon_contract.status import mount_moved_words
from roadmon_contract.validate import errors

W, H = 960, 540
LENS = Intrinsics.from_hfov(W, H, 80)
TRUE = Mount(height_m=1.6, pitch_deg=11.0, yaw_deg=1.0)


@dataclass
class Pose:
    speed_mps: float = 20.0
    heading_deg: float | None = 90.0
    lat: float = 47.0
    lon: float = 8.0
    h_std_m: float = 1.0
    state: str = "ok"
    t_mono: float = 0.0


def lane_frame(mount: Mount, k: int) -> np.ndarray:
    """A road seen through MOUNT: grey textured asphalt, solid edge lines 3.6 m apart and a dashed line beside
    them, the dashes moving by K."""
    rng = np.random.default_rng(k)
    image = cv2.GaussianBlur(np.clip(rng.normal(90, 12, (H, W, 3)), 0, 255).astype(np.uint8), (5, 5), 0)
    image[: H // 4] = (170, 150, 130)  # sky above the horizon
    road = GroundProjector(LENS, mount)
    dash_shift = (k * 1.7) % 12.0
    for left_m, dashed in ((1.8, False), (-1.8, False), (5.4, True)):
        starts = np.arange(3.0 - dash_shift, 80.0, 12.0) if dashed else np.arange(3.0, 80.0, 2.0)
        for s in starts:
            length = 3.0 if dashed else 2.0
            quad = [(s, left_m - 0.07), (s + length, left_m - 0.07), (s + length, left_m + 0.07),
                    (s, left_m + 0.07)]
            pixels = road.ground_to_pixels(np.array([q for q in quad if q[0] > 2.0] or [(0, 0)]))
            if len(pixels) == 4 and not np.isnan(pixels).any():
                cv2.fillPoly(image, [np.round(pixels).astype(np.int32)], (235, 235, 235))
    return image


def watch_drive(cfg: CalibrationConfig, frames: list[np.ndarray], configured: Mount, turning: bool = False,
                speed_mps: float = 20.0) -> MountWatch:
    """Frames at 2 fps with a pose each; TURNING swings the heading 3 degrees a second."""
    watch = MountWatch(cfg)
    projector = GroundProjector(LENS, configured)
    for i, image in enumerate(frames):
        t = 100.0 + i * 0.5
        heading = (90.0 + (3.0 * i * 0.5 if turning else 0.0)) % 360
        watch.look(image, t, Pose(speed_mps, heading), projector)
    return watch


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [lane_frame(TRUE, k) for k in range(10)]


CFG = CalibrationConfig(mount_check_every_s=1.0, mount_check_frames=5)


def many(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Frames for a drive of 20 s at 2 fps: the watch waits 4 s of straight driving, then fits one a second."""
    return [frames[i % len(frames)] for i in range(40)]


def test_the_configured_mount_is_ok_and_a_pitch_two_degrees_off_is_moved(frames: list[np.ndarray]) -> None:
    same = watch_drive(CFG, many(frames), TRUE)
    assert same.reading is not None and same.reading["state"] == "ok", same.reading
    assert same.reading["pitch_deg"] == pytest.approx(TRUE.pitch_deg, abs=0.3)
    assert same.reading["off_m"] < 0.5 and same.reading["height_m"] is None  # no lane width: height not judged

    off = watch_drive(CFG, many(frames), replace(TRUE, pitch_deg=9.0))
    assert off.reading is not None and off.reading["state"] == "moved"
    assert off.reading["pitch_deg"] == pytest.approx(TRUE.pitch_deg, abs=0.3)
    assert off.reading["config_pitch_deg"] == 9.0 and off.reading["off_m"] > CFG.mount_moved_m
    # A limit wider than what 2 degrees misplaces keeps it ok: the threshold is the operator's, in metres.
    lenient = watch_drive(CFG.model_copy(update={"mount_moved_m": 50.0}), many(frames), replace(TRUE, pitch_deg=9.0))
    assert lenient.reading is not None and lenient.reading["state"] == "ok"


def test_with_the_lane_width_a_camera_refitted_lower_is_moved(frames: list[np.ndarray]) -> None:
    """An outside test refitted the camera 0.5 m lower (defects 15 m ahead then land 3.75 m off): pitch and yaw
    alone called it ok. Given the lanes' width, the height is judged too."""
    lower = replace(TRUE, height_m=1.3)
    assert watch_drive(CFG, many(frames), lower).reading["state"] == "ok"  # what pitch and yaw alone can tell
    lanes = CFG.model_copy(update={"mount_lane_width_m": 3.6})
    judged = watch_drive(lanes, many(frames), lower).reading
    assert judged["state"] == "moved" and judged["height_m"] == pytest.approx(1.6, rel=0.06)
    words = mount_moved_words(judged)
    assert f"height {judged['height_m']:.2f} m" in words and "yaw 1.0° and 1.30 m" not in words and "1.30 m" in words
    assert watch_drive(lanes, many(frames), TRUE).reading["state"] == "ok"


def test_frames_that_disagree_are_unclear_and_do_not_erase_a_clear_reading(frames: list[np.ndarray]) -> None:
    scattered = [lane_frame(replace(TRUE, yaw_deg=yaw), k) for k, yaw in enumerate((-8, -4, 0, 4, 8))]
    fresh = watch_drive(CFG, many(scattered), TRUE)
    assert fresh.reading is not None and fresh.reading["state"] == "unclear" and "scatter" in fresh.reading["why"]
    moved = watch_drive(CFG, many(frames), replace(TRUE, pitch_deg=8.0))
    assert moved.reading["state"] == "moved"
    projector = GroundProjector(LENS, replace(TRUE, pitch_deg=8.0))
    for i, image in enumerate(many(scattered)):  # then a stretch whose frames scatter
        moved.look(image, 200.0 + i * 0.5, Pose(), projector)
    assert moved.reading["state"] == "moved"


def test_nothing_is_judged_in_a_turn_slowly_without_markings_or_when_switched_off(frames: list[np.ndarray]) -> None:
    wrong = replace(TRUE, pitch_deg=8.0)
    assert watch_drive(CFG, many(frames), wrong, turning=True).reading is None
    assert watch_drive(CFG, many(frames), wrong, speed_mps=5.0).reading is None
    assert watch_drive(CFG.model_copy(update={"mount_check_every_s": 0.0}), many(frames), wrong).reading is None
    blank = [np.full((H, W, 3), 90, np.uint8)] * 40
    assert watch_drive(CFG, blank, wrong).reading is None


def test_a_change_of_resolution_starts_over(frames: list[np.ndarray]) -> None:
    """Points found at 960 px wide are not points of a 480-px stream."""
    watch = watch_drive(CFG, many(frames), TRUE)
    assert watch.reading is not None
    half = GroundProjector(LENS.scaled(W // 2, H // 2), TRUE)
    for i in range(6):  # straight on, a fit a second: 3 of the new size, too few to judge
        watch.look(cv2.resize(frames[i % len(frames)], (W // 2, H // 2)), 120.0 + i * 0.5, Pose(), half)
    assert 1 <= len(watch._fits) < CFG.mount_check_frames and all(f.vp[0] < W / 2 for f in watch._fits)
    for i in range(6, 14):
        watch.look(cv2.resize(frames[i % len(frames)], (W // 2, H // 2)), 120.0 + i * 0.5, Pose(), half)
    assert watch.reading is not None and watch.reading["state"] == "ok"
    assert watch.reading["pitch_deg"] == pytest.approx(TRUE.pitch_deg, abs=0.3)


def test_a_moved_mount_reaches_the_status_the_server_status_and_doctor(frames: list[np.ndarray],
                                                                       tmp_path: Path) -> None:
    from edge_agent.runtime.assemble import build_agent

    cfg = AgentConfig.model_validate({
        "device": {"id": "veh-mount", "state_dir": str(tmp_path)},
        "calibration": {"width": W, "height": H, "hfov_deg": 80, "height_m": 1.6, "pitch_deg": 8.5, "yaw_deg": 1.0,
                        "mount_check_every_s": 1.0, "mount_check_frames": 5}})
    board = HealthBoard()

    class Still:
        """The filter's pose: driving straight east at 20 m/s."""

        def position_at(self, t_mono: float) -> object:
            return Pose()

        def newest_fix_mono(self) -> float | None:
            return None

        def unsettled(self) -> bool:
            return False

        def utc_at(self, t_mono: float) -> datetime | None:
            return None

    class Blind:
        info = type("Info", (), {"name": "none", "version": "0", "sha256": "0" * 64, "classes": ("pothole",)})()
        thresholds = (0.3,)

        def detect(self, image: np.ndarray) -> list:
            return []

    agent = build_agent(cfg, outbox=tmp_path / "outbox.db", detector=Blind(), health=board)
    agent.pipeline.filter = Still()
    for i, image in enumerate(many(frames)):
        agent.pipeline.process(image, 100.0 + i * 0.5, utc=datetime(2026, 12, 6, 12, 0, tzinfo=UTC))
    status = build_status("online", "veh-mount", agent.outbox, board)
    agent.close()
    assert status["mount"]["state"] == "moved" and status["mount"]["config_pitch_deg"] == 8.5
    assert errors("status", status) == []

    codes = dict(coded_problems(status, datetime.now(UTC), None))
    assert "pitch 11.0°" in codes["mount"] and "8.5°" in codes["mount"] and "calibrate mount" in codes["mount"]
    assert "lens calibration" in codes["mount"]  # a wrong focal length reads the same way
    fine = status | {"mount": status["mount"] | {"state": "ok"}}
    assert "mount" not in dict(coded_problems(fine, datetime.now(UTC), None))
    odd = status["mount"] | {"ahead_m": -5}
    assert errors("status", status | {"mount": odd}) and "15 m ahead" in mount_moved_words(odd)

    # Switched off and on (every night): the knocked camera is still reported before it has driven straight; the
    # frames kept are judged by the config of the day, so a corrected roll or height does not clear it...
    def started(calibration: dict) -> dict | None:
        changed = cfg.model_copy(update={"calibration": cfg.calibration.model_copy(update=calibration)})
        board = HealthBoard()
        build_agent(changed, outbox=tmp_path / "outbox.db", detector=Blind(), health=board).close()
        return board.snapshot()["mount"]

    assert started({})["state"] == "moved" and started({})["at"] <= status["mount"]["at"]  # when its frames were judged
    assert started({"roll_deg": 2.0})["state"] == "moved" and started({"height_m": 1.61})["state"] == "moved"
    # ...a corrected pitch clears it at once, and a check switched off says nothing.
    assert started({"pitch_deg": 11.0})["state"] == "ok"
    assert started({"mount_check_every_s": 0.0}) is None
    kept = tmp_path / "outbox.db.mount.json"
    good = kept.read_text()
    kept.write_text(good.replace('"vp": [', '"vp": ["16", '))  # damaged: judged afresh, never sent on
    assert started({}) is None
    kept.write_text(good)
    fixed = cfg.model_copy(update={"calibration": cfg.calibration.model_copy(update={"pitch_deg": 11.0})})

    write_status_file(status_file_of(cfg.outbox_path, cfg.uplink.status_file), status)
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nid = "veh-mount"\nstate_dir = "{tmp_path}"\n[uplink]\nenabled = false\n'
                      f'[calibration]\nwidth = {W}\nheight = {H}\nhfov_deg = 80\nheight_m = 1.6\npitch_deg = 8.5\n'
                      'yaw_deg = 1.0\nmount_check_every_s = 1.0\nmount_check_frames = 5\n')
    res = CliRunner().invoke(app, ["status", "--config", str(config), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["mount"]["state"] == "moved"
    res = CliRunner().invoke(app, ["status", "--config", str(config)], env={"COLUMNS": "200"})
    assert "camera mount" in res.output and "camera aim off" in res.output and "judged" in res.output
    status_file_of(cfg.outbox_path, cfg.uplink.status_file).unlink()  # a box without the uplink writes none
    res = CliRunner().invoke(app, ["status", "--config", str(config)], env={"COLUMNS": "200"})
    assert "camera aim off" in res.output, res.output

    # doctor, with the agent stopped (a technician stops the service before working on the van):
    from edge_agent.doctor.calibration_check import check_calibration
    from edge_agent.doctor.result import Context, Level

    verdict = check_calibration(Context(str(tmp_path / "agent.toml"), cfg))
    assert verdict.level == Level.YELLOW and "pitch 11.0°" in verdict.explanation, verdict
    assert check_calibration(Context(str(tmp_path / "agent.toml"), fixed)).level == Level.GREEN
