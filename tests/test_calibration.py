"""Calibration: the camera model, pixel <-> ground round trips, hand-checked geometry, calibrateCamera on
rendered checkerboards, the config section and the grid overlay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from calibration import GroundProjector, Intrinsics, Mount, projector_from_config
from calibration.checkerboard import calibrate_images, parse_board
from calibration.config import CalibrationError, intrinsics_text, read_intrinsics
from calibration.grid import draw_ground_grid
from edge_agent import config as agent_config
from edge_agent.cli import app
from edge_agent.durable import write_durably

CAM = Intrinsics.from_hfov(640, 360, 70)


def test_straight_ahead_by_hand() -> None:
    # 1.5 m high, 20 deg down: the image centre sees the road at 1.5 / tan(20 deg) ahead, on the centre line.
    p = GroundProjector(CAM, Mount(height_m=1.5, pitch_deg=20))
    f, left = p.pixel_to_ground(CAM.cx, CAM.cy)
    assert f == pytest.approx(1.5 / math.tan(math.radians(20)), rel=1e-9)
    assert left == pytest.approx(0.0, abs=1e-9)
    # A point 1 m to the left at 10 m appears left of centre, below the horizon, at u = cx - fx * 1 / depth.
    u, v = p.ground_to_pixel(10.0, 1.0)
    depth = 10 * math.cos(math.radians(20)) + 1.5 * math.sin(math.radians(20))
    assert u == pytest.approx(CAM.cx - CAM.fx * 1.0 / depth, rel=1e-9)
    assert v > p.horizon_v()
    assert p.horizon_v() == pytest.approx(CAM.cy - CAM.fy * math.tan(math.radians(20)), abs=0.1)


def test_lateral_offset_and_yaw() -> None:
    p = GroundProjector(CAM, Mount(height_m=1.2, pitch_deg=15, lateral_m=0.5))
    # The camera sits 0.5 m left, so the image centre column sees the line 0.5 m left of the vehicle's centre.
    assert p.pixel_to_ground(CAM.cx, 300)[1] == pytest.approx(0.5)
    yawed = GroundProjector(CAM, Mount(height_m=1.2, pitch_deg=15, yaw_deg=10))
    f, left = yawed.pixel_to_ground(CAM.cx, 300)
    assert math.degrees(math.atan2(left, f)) == pytest.approx(10.0, abs=1e-6)


def test_roll_tilts_the_horizon() -> None:
    p = GroundProjector(CAM, Mount(height_m=1.4, pitch_deg=5, roll_deg=3))
    left_edge = p.ground_to_pixel(500, 60)
    right_edge = p.ground_to_pixel(500, -60)
    # Right side down (head tilted right): the horizon rises towards the right of the image.
    assert right_edge[1] < left_edge[1]
    assert p.horizon_v(600) < p.horizon_v(40)


@pytest.mark.parametrize("mount", [Mount(1.4, 10), Mount(2.2, 25, 1.5, -4, 0.3), Mount(1.1, 5, -2, 3, -0.4)])
@pytest.mark.parametrize("dist", [(), (-0.12, 0.03, 0.001, -0.0005, 0.0)])
def test_round_trip_pixel_ground_pixel(mount: Mount, dist: tuple[float, ...]) -> None:
    intr = Intrinsics(CAM.fx, CAM.fy * 1.01, 322.0, 178.5, 640, 360, dist)
    p = GroundProjector(intr, mount)
    horizon = p.horizon_v()
    rng = np.random.default_rng(1)
    uv = np.column_stack([rng.uniform(0, 639, 300), rng.uniform(max(horizon, 0) + 5, 359, 300)])
    ground = p.pixels_to_ground(uv)
    ok = np.isfinite(ground).all(axis=1)
    assert ok.mean() > 0.95
    back = p.ground_to_pixels(ground[ok])
    assert np.abs(back - uv[ok]).max() < 1e-3
    # and ground -> pixel -> ground
    g = np.column_stack([rng.uniform(3, 40, 200), rng.uniform(-6, 6, 200)])
    pix = p.ground_to_pixels(g)
    seen = np.isfinite(pix).all(axis=1)  # with distortion, points far outside the view are refused
    assert seen.mean() > 0.8
    assert np.abs(p.pixels_to_ground(pix[seen]) - g[seen]).max() < 1e-4


def test_above_horizon_and_behind_are_none() -> None:
    p = GroundProjector(CAM, Mount(1.4, 10))
    assert p.pixel_to_ground(320, 10) is None
    assert p.ground_to_pixel(-5, 0) is None
    # A barrel-distorted lens: a point far to the side must not fold back into the image.
    fisheye = GroundProjector(Intrinsics(CAM.fx, CAM.fy, CAM.cx, CAM.cy, 640, 360, (-0.35, 0.1, 0, 0, 0.02)),
                              Mount(1.4, 10))
    assert fisheye.ground_to_pixel(2.0, 30.0) is None
    assert fisheye.ground_to_pixel(10.0, 1.0) is not None


def test_ground_map_matches_pointwise() -> None:
    p = GroundProjector(CAM, Mount(1.6, 12, 1, 2, 0.2))
    f, left = p.ground_map()
    for u, v in ((10, 350), (320, 200), (600, 250)):
        assert (f[v, u], left[v, u]) == pytest.approx(p.pixel_to_ground(u, v), rel=1e-4)
    assert np.isnan(f[0, 320])


def test_footprint_is_a_trapezoid_ahead() -> None:
    p = GroundProjector(CAM, Mount(1.4, 10))
    poly = np.array(p.footprint(max_range_m=30))
    assert len(poly) > 8
    assert poly[:, 0].max() == pytest.approx(30, abs=0.01)
    near = p.pixel_to_ground(320, 359)[0]
    assert poly[:, 0].min() == pytest.approx(near, rel=0.02)
    # wider far away than near
    far_width = np.ptp(poly[poly[:, 0] > 29.9][:, 1])
    near_width = np.ptp(poly[poly[:, 0] < near + 0.05][:, 1])
    assert far_width > 3 * near_width


def test_ground_error_grows_with_distance() -> None:
    p = GroundProjector(CAM, Mount(1.4, 10))
    errors = [p.ground_error_per_pixel(320, v) for v in (350, 250, 150, 110)]
    along = [e[0] for e in errors]
    assert along == sorted(along)
    # Along-track error per pixel ~ d^2 / (fy * h) roughly: check the order of magnitude at 10 m.
    v10 = p.ground_to_pixel(10, 0)[1]
    e10 = p.ground_error_per_pixel(320, v10)[0]
    assert e10 == pytest.approx(10**2 / (CAM.fy * 1.4), rel=0.35)
    assert p.ground_sigma_m(320, v10, 2.0) > p.ground_sigma_m(320, 350, 2.0)
    assert p.ground_error_per_pixel(320, 5) is None


def _render_board(intr: Intrinsics, board: tuple[int, int], square_m: float, rvec: np.ndarray, tvec: np.ndarray,
                  ) -> np.ndarray:
    """A camera image of a (cols+1) x (rows+1) square checkerboard with a white margin, at pose (rvec, tvec)."""
    cols, rows = board
    px = 40  # texture pixels per square
    tex = np.full(((rows + 3) * px, (cols + 3) * px), 255, np.uint8)
    for r in range(rows + 1):
        for c in range(cols + 1):
            if (r + c) % 2 == 0:
                tex[(r + 1) * px:(r + 2) * px, (c + 1) * px:(c + 2) * px] = 0
    # texture pixel (x, y) -> board plane (X, Y) = ((x / px) - 2, (y / px) - 2) squares: inner corner (0,0) at
    # texture (2px, 2px).
    rot, _ = cv2.Rodrigues(rvec)
    h = intr.matrix @ np.column_stack([rot[:, 0], rot[:, 1], tvec])
    to_board = np.array([[square_m / px, 0, -2 * square_m], [0, square_m / px, -2 * square_m], [0, 0, 1]])
    img = cv2.warpPerspective(tex, h @ to_board, (intr.width, intr.height), flags=cv2.INTER_AREA,
                              borderValue=200)
    return cv2.GaussianBlur(img, (3, 3), 0.6)


def _render_board_distorted(intr: Intrinsics, board: tuple[int, int], square_m: float, rvec: np.ndarray,
                            tvec: np.ndarray) -> np.ndarray:
    """As _render_board, through a lens with intr.dist: each output pixel is undistorted to find the ideal
    pixel it shows, which is then looked up in the ideal rendering (made on a margin-padded canvas)."""
    pad = 200
    ideal = Intrinsics(intr.fx, intr.fy, intr.cx + pad, intr.cy + pad, intr.width + 2 * pad, intr.height + 2 * pad)
    flat = _render_board(ideal, board, square_m, rvec, tvec)
    uu, vv = np.meshgrid(np.arange(intr.width, dtype=np.float64), np.arange(intr.height, dtype=np.float64))
    pts = np.column_stack([uu.ravel(), vv.ravel()]).reshape(-1, 1, 2)
    und = cv2.undistortPoints(pts, intr.matrix, intr.dist_coeffs, P=ideal.matrix).reshape(intr.height, intr.width, 2)
    return cv2.remap(flat, und[..., 0].astype(np.float32), und[..., 1].astype(np.float32), cv2.INTER_LINEAR,
                     borderValue=200)


def test_calibrate_camera_recovers_lens_distortion(tmp_path: Path) -> None:
    truth = Intrinsics(700.0, 700.0, 640.0, 360.0, 1280, 720, (-0.25, 0.08, 0.0, 0.0, 0.0))
    board = (9, 6)
    rng = np.random.default_rng(8)
    for i in range(16):
        rvec = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2)])
        # Spread the board over the frame, corners included, where distortion shows most (as a technician must:
        # without views near the corners the fitted polynomial is free to run off there).
        tvec = np.array([rng.uniform(-0.45, 0.22), rng.uniform(-0.26, 0.12), rng.uniform(0.45, 0.6)])
        cv2.imwrite(str(tmp_path / f"v{i:02d}.png"), _render_board_distorted(truth, board, 0.025, rvec, tvec))
    result = calibrate_images(sorted(tmp_path.glob("*.png")), board, 25.0)
    assert len(result.per_image_px) >= 8
    assert result.intrinsics.fx == pytest.approx(truth.fx, rel=0.03)
    assert result.intrinsics.dist[0] == pytest.approx(-0.25, abs=0.02)
    assert result.rms_px < 0.3
    # What matters downstream: pixels map to the same rays as with the true lens.
    p_true = GroundProjector(truth, Mount(1.5, 12))
    p_cal = GroundProjector(result.intrinsics, Mount(1.5, 12))
    for u, v in ((100, 650), (640, 500), (1180, 690)):
        g_true, g_cal = p_true.pixel_to_ground(u, v), p_cal.pixel_to_ground(u, v)
        assert math.dist(g_true, g_cal) < 0.01 * math.hypot(*g_true)


def test_calibrate_camera_on_rendered_boards(tmp_path: Path) -> None:
    truth = Intrinsics(820.0, 818.0, 652.0, 355.0, 1280, 720)
    board = parse_board("9x6")
    square = 0.025
    rng = np.random.default_rng(4)
    for i in range(10):
        rvec = np.array([rng.uniform(-0.45, 0.45), rng.uniform(-0.45, 0.45), rng.uniform(-0.2, 0.2)])
        tvec = np.array([rng.uniform(-0.12, 0.0), rng.uniform(-0.08, 0.0), rng.uniform(0.45, 0.7)])
        cv2.imwrite(str(tmp_path / f"view{i:02d}.png"), _render_board(truth, board, square, rvec, tvec))
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((720, 1280), 128, np.uint8))
    # Sorted first, another camera's photo and a broken file must not decide the size for the others.
    cv2.imwrite(str(tmp_path / "a_other_size.png"), np.full((360, 640), 128, np.uint8))
    (tmp_path / "a_broken.jpg").write_bytes(b"not a jpeg")
    result = calibrate_images(sorted(tmp_path.glob("*.*")), board, square * 1000)
    assert len(result.per_image_px) >= 8
    assert any("blank.png" in r for r in result.rejected)
    assert any("a_other_size.png (size 640x360, expected 1280x720)" in r for r in result.rejected)
    # Each image's own reprojection error, of the order of the overall RMS (not corners against each other).
    assert max(result.per_image_px.values()) < 3 * result.rms_px + 0.1
    assert result.intrinsics.fx == pytest.approx(truth.fx, rel=0.03)
    assert result.intrinsics.fy == pytest.approx(truth.fy, rel=0.03)
    assert result.intrinsics.cx == pytest.approx(truth.cx, abs=25)
    assert result.rms_px < 0.5

    # The CLI writes a file that the config can point at.
    out = tmp_path / "cam.toml"
    res = CliRunner().invoke(app, ["calibrate", "intrinsics", "--images", str(tmp_path), "--board", "9x6",
                                   "--square-mm", "25", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "RMS reprojection error" in res.output
    cfg = agent_config.parse({"calibration": {"intrinsics_file": str(out), "height_m": 1.3}})
    p = projector_from_config(cfg.calibration)
    assert p.intrinsics.fx == pytest.approx(truth.fx, rel=0.03)
    assert p.mount.height_m == 1.3


def test_images_only_opencv_reads_are_rejected_not_a_crash(tmp_path: Path) -> None:
    """The sizes are read from the headers (PIL), the pictures by OpenCV: files whose format only OpenCV knows
    (Radiance HDR under a .png name) left no size to compare with, and indexing it raised TypeError."""
    for i in range(3):
        hdr = tmp_path / f"v{i}.hdr"
        cv2.imwrite(str(hdr), np.full((120, 160, 3), 0.5, np.float32))
        hdr.rename(tmp_path / f"v{i}.png")
    with pytest.raises(CalibrationError, match=r"v0\.png \(format not recognised\)"):
        calibrate_images(sorted(tmp_path.glob("*.png")), (9, 6), 25.0)


def test_calibrate_intrinsics_fails_clearly(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((100, 100), np.uint8))
    res = CliRunner().invoke(app, ["calibrate", "intrinsics", "--images", str(tmp_path)])
    assert res.exit_code == 1
    assert "at least 3" in res.output
    res = CliRunner().invoke(app, ["calibrate", "intrinsics", "--images", str(tmp_path), "--out", "cam.yaml"])
    assert res.exit_code == 2 and "'--out'" in res.output  # it would have written TOML under a YAML name
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["calibrate", "intrinsics", "--images", str(empty)])
    assert res.exit_code == 1 and "no images" in res.output
    with pytest.raises(CalibrationError):
        parse_board("9by6")


def test_intrinsics_file_round_trip_and_errors(tmp_path: Path) -> None:
    intr = Intrinsics(500.5, 501.0, 320.2, 240.1, 640, 480, (-0.1, 0.01, 0.0, 0.0, 0.0))
    for name in ("a.toml", "a.json"):
        write_durably(tmp_path / name, intrinsics_text(tmp_path / name, intr, 0.3, 12))
        assert read_intrinsics(tmp_path / name) == intr
    (tmp_path / "bad.json").write_text(json.dumps({"fx": 1}))
    with pytest.raises(CalibrationError, match="missing"):
        read_intrinsics(tmp_path / "bad.json")
    with pytest.raises(CalibrationError, match="not found"):
        read_intrinsics(tmp_path / "nope.toml")


def test_config_section_defaults_and_validation() -> None:
    cfg = agent_config.parse({"calibration": {"width": 640, "height": 360, "hfov_deg": 90, "pitch_deg": 12}})
    p = projector_from_config(cfg.calibration)
    assert p.intrinsics.fx == pytest.approx(320.0)
    assert (p.intrinsics.cx, p.intrinsics.cy) == (320.0, 180.0)
    # a camera streaming half resolution gets scaled intrinsics
    half = projector_from_config(cfg.calibration, (320, 180))
    assert half.intrinsics.fx == pytest.approx(160.0)
    with pytest.raises(agent_config.ConfigError, match=r"calibration\.pitch_dgr"):
        agent_config.parse({"calibration": {"pitch_dgr": 3}})
    with pytest.raises(agent_config.ConfigError, match="cx"):
        agent_config.parse({"calibration": {"width": 640, "cx": 900}})


def test_grid_overlay_lands_on_projected_points(tmp_path: Path) -> None:
    p = GroundProjector(CAM, Mount(1.4, 12))
    blank = np.zeros((360, 640, 3), np.uint8)
    grid = draw_ground_grid(blank, p, max_forward_m=20, half_width_m=3)
    drawn = grid.max(axis=2) > 0
    assert drawn[:int(p.horizon_v()) - 2].sum() == 0, "nothing above the horizon"
    # The 5 m and 10 m cross lines (red) pass through their projected centre points.
    for f in (5.0, 10.0):
        u, v = p.ground_to_pixel(f, 0.0)
        patch = grid[int(v) - 1:int(v) + 2, int(u) - 1:int(u) + 2]
        assert patch[..., 2].max() > 100
    # CLI: an image and a config in, grid.png out.
    img_path, out_path = tmp_path / "road.png", tmp_path / "grid.png"
    cv2.imwrite(str(img_path), blank)
    cfg_path = tmp_path / "agent.toml"
    cfg_path.write_text("[calibration]\nwidth = 640\nheight = 360\nhfov_deg = 70\npitch_deg = 12\n")
    res = CliRunner().invoke(app, ["calibrate", "check", "--image", str(img_path), "--out", str(out_path),
                                   "--config", str(cfg_path), "--max-forward", "20", "--half-width", "3"])
    assert res.exit_code == 0, res.output
    assert np.array_equal(cv2.imread(str(out_path)), grid)
    assert "another shape" not in res.output
    # A frame of another shape is drawn but said to be stretched; an output name OpenCV cannot write is refused.
    cv2.imwrite(str(img_path), np.zeros((400, 640, 3), np.uint8))
    res = CliRunner().invoke(app, ["calibrate", "check", "--image", str(img_path), "--out", str(out_path),
                                   "--config", str(cfg_path)])
    assert res.exit_code == 0 and "640x400, another shape than the 640x360" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["calibrate", "check", "--image", str(img_path), "--out", str(tmp_path / "noext"),
                                   "--config", str(cfg_path)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit) and "'--out'" in res.output


def test_grid_labels_every_5_m_line_that_has_room() -> None:
    """The 5 m line ran out of the picture at its -half_width end and the 25 m label was crowded out, so both
    went unlabelled: labels go beside the ends inside the image, the other end when one side is crowded."""
    from calibration.grid import LABEL_FONT, LABEL_SCALE, grid_labels

    cfg = agent_config.AgentConfig()
    p = projector_from_config(cfg.calibration)
    thick = max(1, round(p.intrinsics.width / 640))
    labels = grid_labels(p, [5.0, 10.0, 15.0, 20.0, 25.0, 30.0], 5.0, thick)
    assert [text for text, _ in labels][:5] == ["5 m", "10 m", "15 m", "20 m", "25 m"]
    for text, (x, y) in labels:
        (w, h), _ = cv2.getTextSize(text, LABEL_FONT, LABEL_SCALE * thick, thick)
        assert x >= 0 and x + w <= p.intrinsics.width and h <= y <= p.intrinsics.height, (text, x, y)
    rows = sorted(y for _, (_, y) in labels)
    assert len(set(rows)) == len(rows)


def test_a_low_rms_from_photos_that_pin_nothing_down_is_called_doubtful(tmp_path: Path) -> None:
    """An installer's 6 photos of a board facing the camera fitted fx 1108 px (true 900) at RMS 0.30 px, and the
    file was used without a word; so was a distortion that folds back before the image's corners."""
    from calibration.intrinsics_quality import distortion_folds

    truth = Intrinsics(900.0, 900.0, 640.0, 360.0, 1280, 720, (-0.3, 0.1, 0.0, 0.0, 0.0))
    for i, (x, y) in enumerate([(0, 0), (0.02, 0.01), (-0.02, 0.01), (0.01, -0.02), (-0.01, -0.01), (0, 0.02)]):
        tvec = np.array([x - 0.1, y - 0.06, 0.8 + 0.05 * i])  # centred, 0.8-1.05 m away, face-on
        rvec = np.array([0.02 * i, -0.02 * i, 0.01])
        cv2.imwrite(str(tmp_path / f"f{i}.png"), _render_board_distorted(truth, (9, 6), 0.025, rvec, tvec))
    result = calibrate_images(sorted(tmp_path.glob("*.png")), (9, 6), 25.0)
    assert result.rms_px < 0.5  # the RMS alone says "good"
    said = " | ".join(result.problems)
    assert "board tilted" in said and "bottom-left" in said and "bottom-right" in said, said
    out = tmp_path / "cam.toml"
    res = CliRunner().invoke(app, ["calibrate", "intrinsics", "--images", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 0 and "check:" in res.output and "board tilted" in res.output
    assert read_intrinsics(out).fx > 0  # written: the installer decides, doctor keeps saying it (test_doctor)

    # The installer's fit of 10 tilted photos that kept to the middle of the image:
    assert "folds back" in distortion_folds(Intrinsics(900.8, 900.8, 640, 360, 1280, 720,
                                                       (-0.3432, 1.7322, 0.0, 0.0, -15.4405)))
    assert distortion_folds(truth) is None
    assert distortion_folds(Intrinsics(400, 400, 640, 360, 1280, 720, (-0.25, 0.06, 0, 0, 0))) is None  # 116° wide


def test_calibrate_intrinsics_refuses_an_rms_above_1_px_and_hints_the_board_count(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    import calibration.checkerboard as checkerboard
    from calibration.checkerboard import CalibrationResult

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"v{i}.png"), _render_board(CAM, (9, 6), 0.025, np.array([0.2, 0.1, 0.0]),
                                                               np.array([-0.1, -0.06, 0.5])))
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"heic")
    res = CliRunner().invoke(app, ["calibrate", "intrinsics", "--images", str(tmp_path), "--board", "10x7",
                                   "--out", str(tmp_path / "x.toml")])
    assert res.exit_code == 1 and "a board of 10x7 squares is --board 9x6" in res.output, res.output
    assert "IMG_0001.HEIC" in res.output and "convert phone HEIC" in res.output
    res = CliRunner().invoke(app, ["calibrate", "intrinsics", "--images", str(tmp_path), "--square-mm", "inf"])
    assert res.exit_code == 2

    bad = CalibrationResult(CAM, 1.7, {"v0.png": 1.7}, [], ["RMS reprojection error 1.70 px (above 1 px)"])
    monkeypatch.setattr(checkerboard, "calibrate_images", lambda *a, **k: bad)
    out = tmp_path / "cam.toml"
    res = CliRunner().invoke(app, ["calibrate", "intrinsics", "--images", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 1 and "not written" in res.output and not out.exists()
    res = CliRunner().invoke(app, ["calibrate", "intrinsics", "--images", str(tmp_path), "--out", str(out),
                                   "--force"])
    assert res.exit_code == 0 and out.exists()


def test_calibrate_mount_finds_the_pitch_yaw_and_height_of_a_drive(tmp_path: Path) -> None:
    """A rendered drive (known mount: 2.0 m, pitch 14, yaw -1, roll 0.5) through a config whose pitch and yaw are
    off by 3 and 2 degrees: the lane markings give them back, and the lane's width the height."""
    from edge_agent.lab.sim.drive import _streams
    from edge_agent.lab.sim.surface import random_style

    drive = tmp_path / "drive"
    res = CliRunner().invoke(app, ["sim", "drive", "--out", str(drive), "--seed", "3", "--duration", "4",
                                   "--defects", "0"])
    assert res.exit_code == 0, res.output
    text = (drive / "agent.toml").read_text()
    assert "pitch_deg = 14.0" in text and "yaw_deg = -1.0" in text and "height_m = 2.0" in text
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(text.replace("pitch_deg = 14.0", "pitch_deg = 11.0").replace("yaw_deg = -1.0", "yaw_deg = 1.0"))
    lane = random_style(_streams(3)["style"]).lane_width  # the drive's own lane
    picture = tmp_path / "mount.png"
    res = CliRunner().invoke(app, ["calibrate", "mount", "--images", str(drive / "video.mp4"), "--config",
                                   str(wrong), "--lane-width", f"{lane:.3f}", "--frames", "6", "--out",
                                   str(picture)])
    assert res.exit_code == 0, res.output
    fitted = dict(line.split(" = ") for line in res.output.split("set in [calibration]:\n")[1].splitlines()
                  if " = " in line)
    assert float(fitted["pitch_deg"]) == pytest.approx(14.0, abs=0.3)
    assert float(fitted["yaw_deg"]) == pytest.approx(-1.0, abs=0.5)  # the vehicle's heading in its lane wanders
    assert float(fitted["height_m"]) == pytest.approx(2.0, rel=0.03)
    assert "placed" in res.output and cv2.imread(str(picture)) is not None

    # Straight from the box's camera (an IP camera here), frames 0.5 s apart:
    from tests.mjpeg import mjpeg_camera

    ok, frame = cv2.VideoCapture(str(drive / "video.mp4")).read()
    assert ok
    with mjpeg_camera(cv2.imencode(".jpg", frame)[1], fps=10, frames=600) as url:
        res = CliRunner().invoke(app, ["calibrate", "mount", "--camera", url, "--frames", "5", "--config", str(wrong),
                                       "--out", str(picture)])
    assert res.exit_code == 0 and "of 5 frames" in res.output, res.output
    # Too few frames, or a height the lane width contradicts, is said, not printed as the values to set:
    few = CliRunner().invoke(app, ["calibrate", "mount", "--images", str(drive / "video.mp4"), "--frames", "2",
                                   "--config", str(wrong), "--lane-width", "3.5", "--out", str(picture)])
    assert few.exit_code == 1 and "at least 5 are needed" in few.output and "set in" not in few.output
    guessed = CliRunner().invoke(app, ["calibrate", "mount", "--images", str(drive / "video.mp4"), "--frames", "6",
                                       "--config", str(wrong), "--lane-width", "3.5", "--out", str(picture)])
    said = " ".join(guessed.output.split())
    assert guessed.exit_code == 0 and "means a lane 3.0" in said and "wide, not 3.5" in said, said  # true: 3.02

    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((360, 640, 3), 110, np.uint8))
    res = CliRunner().invoke(app, ["calibrate", "mount", "--images", str(grey), "--config", str(wrong)])
    assert res.exit_code == 1 and "no lane markings" in res.output


@pytest.mark.shared
def test_the_vanishing_point_of_real_survey_frames_agrees_with_their_lane_masks(shared_survey) -> None:
    """Real frames of a survey vehicle's camera: the point where the painted markings meet against the one where
    the annotated lane's edges meet (python -m models.mount_eval has the figures for docs/calibration.md)."""
    from models.mount_eval import compare

    r = compare(shared_survey, step=40)
    vp = np.abs(r["vp_error_px"])
    assert len(vp) >= 0.9 * (r["frames"] - r["no_mask_lane"])
    assert np.median(vp[:, 0]) < 6 and np.median(vp[:, 1]) < 6  # ~0.7 deg at this camera's ~460 px focal length
    assert abs(np.median(r["vp_error_px"][:, 1])) < 3  # no bias in pitch
