"""The drive simulator: deterministic output, valid NMEA with the asked-for noise, truth that matches the
video (defects appear where the calibration says), and an agent config the agent accepts."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pynmea2
import pytest
from typer.testing import CliRunner

from calibration import projector_from_config
from edge_agent import config as agent_config
from edge_agent.cli import app
from edge_agent.lab.sim.gnss_noise import gnss_errors
from edge_agent.lab.sim.nmea_writer import checksum
from roadmon_contract.geodesy import metres_per_degree

FILES = ["video.mp4", "drive.nmea", "truth.csv", "defects.geojson", "boxes.csv", "agent.toml", "drive.json"]


def _run(out: Path, *args: str) -> None:
    res = CliRunner().invoke(app, ["sim", "drive", "--out", str(out), *args])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drive") / "d"
    _run(out, "--seed", "7", "--duration", "12", "--defects", "5", "--potholes", "4", "--nmea-hz", "5")
    return out


def _read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    return frames


def test_writes_every_file_with_consistent_metadata(drive: Path) -> None:
    for name in FILES:
        assert (drive / name).stat().st_size > 0, name
    meta = json.loads((drive / "drive.json").read_text())
    assert {"start_utc", "fps", "frames", "width", "height", "seed", "minutes", "gps_noise_m", "gps_noise_model",
            "nmea_hz", "defects"} <= set(meta)
    assert meta["gps_noise_model"] == "white"  # the default: the issues' synthetic receiver
    assert meta["frames"] == 180 and meta["fps"] == 15 and (meta["width"], meta["height"]) == (640, 360)
    frames = _read_video(drive / "video.mp4")
    assert len(frames) == meta["frames"]
    assert frames[0].shape == (360, 640, 3)
    cfg = agent_config.load(drive / "agent.toml")  # valid against the full AgentConfig
    assert cfg.camera.source.endswith("video.mp4") and cfg.gnss.source == "file"
    assert Path(cfg.gnss.file).name == "drive.nmea"
    res = CliRunner().invoke(app, ["config", "check", str(drive / "agent.toml")])
    assert res.exit_code == 0, res.output


def test_same_seed_same_files_other_seed_other_drive(tmp_path: Path) -> None:
    args = ["--duration", "3", "--width", "320", "--height", "180", "--defects", "3"]
    _run(tmp_path / "a", "--seed", "5", *args)
    _run(tmp_path / "b", "--seed", "5", *args)
    _run(tmp_path / "c", "--seed", "6", *args)
    for name in FILES:
        a = (tmp_path / "a" / name).read_bytes()
        b = (tmp_path / "b" / name).read_bytes()
        if name == "agent.toml":  # holds its own folder's absolute paths
            a, b = a.replace(b"/a/", b"/x/"), b.replace(b"/b/", b"/x/")
        assert a == b, name
    assert (tmp_path / "a" / "truth.csv").read_bytes() != (tmp_path / "c" / "truth.csv").read_bytes()


def _truth(drive: Path) -> dict[str, np.ndarray]:
    with (drive / "truth.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("t", "lat", "lon", "speed", "heading")}


def test_nmea_has_valid_checksums_and_noise_around_truth(drive: Path) -> None:
    meta = json.loads((drive / "drive.json").read_text())
    start = dt.datetime.fromisoformat(meta["start_utc"].replace("Z", "+00:00"))
    truth = _truth(drive)
    lines = (drive / "drive.nmea").read_bytes().decode("ascii").split("\r\n")
    assert lines[-1] == ""
    kinds: dict[str, int] = {}
    errors = []
    m_lat, m_lon = metres_per_degree(truth["lat"][0])
    for line in lines[:-1]:
        body, cs = line[1:].split("*")
        assert checksum(body) == cs
        msg = pynmea2.parse(line, check=True)
        kinds[msg.sentence_type] = kinds.get(msg.sentence_type, 0) + 1
        if msg.sentence_type == "GGA":
            assert msg.gps_qual == 1 and 0.5 < float(msg.horizontal_dil) < 3.5 and int(msg.num_sats) >= 5
            when = dt.datetime.combine(start.date(), msg.timestamp).replace(tzinfo=dt.UTC)
            t = (when - start).total_seconds()
            lat_t = np.interp(t, truth["t"], truth["lat"])
            lon_t = np.interp(t, truth["t"], truth["lon"])
            errors.append(((msg.latitude - lat_t) * m_lat, (msg.longitude - lon_t) * m_lon))
        if msg.sentence_type == "GST":
            assert float(msg.std_dev_latitude) == pytest.approx(3.0 / math.sqrt(2), abs=0.01)
    n_epochs = (12 + 5) * 5 + 1  # 5 s lead-in, 5 Hz
    assert kinds == {"RMC": n_epochs, "VTG": n_epochs, "GGA": n_epochs, "GST": n_epochs}
    err = np.array(errors)
    assert np.all(np.abs(err) < 5 * 3.0 / math.sqrt(2))
    assert 0.2 < np.hypot(err[:, 0], err[:, 1]).mean() < 12


@pytest.mark.parametrize("model", ["white", "drift"])
def test_noise_models_have_the_asked_horizontal_rms(model: str) -> None:
    e = gnss_errors(np.random.default_rng(0), np.arange(0, 20000.0, 1.0), 3.0, model)
    assert np.std(e.east_m) == pytest.approx(3.0 / math.sqrt(2), rel=0.1)
    assert np.std(e.north_m) == pytest.approx(3.0 / math.sqrt(2), rel=0.1)
    assert np.sqrt(np.mean(e.east_m**2 + e.north_m**2)) == pytest.approx(3.0, rel=0.1)


def test_white_noise_is_independent_per_epoch() -> None:
    e = gnss_errors(np.random.default_rng(1), np.arange(0, 20000.0, 1.0), 3.0, "white")
    assert abs(np.corrcoef(e.east_m[:-1], e.east_m[1:])[0, 1]) < 0.05
    assert abs(np.corrcoef(e.north_m[:-1], e.north_m[1:])[0, 1]) < 0.05
    # Averaging 9 epochs divides it by 3: what a filter and a track's views can exploit.
    means = e.east_m[: 20000 // 9 * 9].reshape(-1, 9).mean(axis=1)
    assert np.std(means) == pytest.approx(3.0 / math.sqrt(2) / 3, rel=0.15)


def test_unknown_noise_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="noise model"):
        gnss_errors(np.random.default_rng(0), np.arange(0, 10.0), 3.0, "pink")  # type: ignore[arg-type]
    res = CliRunner().invoke(app, ["sim", "drive", "--out", str(tmp_path / "x"), "--gps-noise-model", "pink"])
    assert res.exit_code == 2 and "white, drift" in res.output, res.output
    assert not (tmp_path / "x" / "video.mp4").exists()


def test_drift_noise_model_has_the_asked_sigma_and_is_correlated() -> None:
    rng = np.random.default_rng(0)
    times = np.arange(0, 20000.0, 1.0)
    e = gnss_errors(rng, times, 3.0, "drift")
    # 3 m horizontal RMS: 3 / sqrt(2) per axis
    assert np.std(e.east_m) == pytest.approx(3.0 / math.sqrt(2), rel=0.15)
    assert np.std(e.north_m) == pytest.approx(3.0 / math.sqrt(2), rel=0.15)
    assert np.sqrt(np.mean(e.east_m**2 + e.north_m**2)) == pytest.approx(3.0, rel=0.15)
    lag1 = np.corrcoef(e.east_m[:-1], e.east_m[1:])[0, 1]
    assert 0.6 < lag1 < 0.8  # 75 % of the variance wanders (tau 45 s), 25 % is white
    assert np.all((e.hdop >= 0.6) & (e.hdop <= 3.0))


def test_truth_speeds_and_headings_are_plausible(tmp_path: Path) -> None:
    _run(tmp_path / "d", "--seed", "2", "--duration", "150", "--defects", "0", "--width", "64", "--height", "48",
         "--fps", "2")
    truth = _truth(tmp_path / "d")
    assert truth["speed"].max() <= 15.01
    moving = truth["speed"][truth["speed"] > 1]
    assert np.median(moving) > 8
    assert (truth["speed"] < 0.05).sum() * 0.1 >= 4, "one stop of several seconds"
    turned = np.abs(np.diff(np.unwrap(np.radians(truth["heading"]))))
    assert np.degrees(turned.sum()) > 20, "the route has curves"


def _vehicle_frame(truth: dict[str, np.ndarray], t: float, lat: float, lon: float) -> tuple[float, float]:
    """(forward, left) metres of a point from the true vehicle position/heading at time t (flat earth)."""
    vlat = np.interp(t, truth["t"], truth["lat"])
    vlon = np.interp(t, truth["t"], truth["lon"])
    hdg = math.radians(np.interp(t, truth["t"], np.degrees(np.unwrap(np.radians(truth["heading"])))))
    m_lat, m_lon = metres_per_degree(vlat)
    east, north = (lon - vlon) * m_lon, (lat - vlat) * m_lat
    forward = east * math.sin(hdg) + north * math.cos(hdg)
    left = -east * math.cos(hdg) + north * math.sin(hdg)
    return forward, left


def test_defects_appear_where_truth_and_calibration_put_them(drive: Path) -> None:
    truth = _truth(drive)
    meta = json.loads((drive / "drive.json").read_text())
    cfg = agent_config.parse(tomllib.loads((drive / "agent.toml").read_text()))
    projector = projector_from_config(cfg.calibration)
    frames = _read_video(drive / "video.mp4")
    features = json.loads((drive / "defects.geojson").read_text())["features"]
    potholes = [f for f in features if f["properties"]["class"] == "pothole"]
    assert len(potholes) == 4 and sum(f["properties"]["class"] == "crack" for f in features) == 1
    checked = 0
    for feat in potholes:
        lon, lat = feat["geometry"]["coordinates"]
        props = feat["properties"]
        for k in range(meta["frames"]):
            forward, left = _vehicle_frame(truth, k / meta["fps"], lat, lon)
            pix = projector.ground_to_pixel(forward, left)
            visible = pix is not None and projector.in_image(*pix) and 3.5 < forward < 9
            if not visible:
                continue
            # The painted box (truth) must agree, and the pixel there must be darker than the road around it.
            assert props["first_frame"] is not None and props["first_frame"] <= k <= props["last_frame"]
            gray = cv2.cvtColor(frames[k], cv2.COLOR_BGR2GRAY).astype(float)
            u, v = round(pix[0]), round(pix[1])
            centre = gray[v - 1:v + 2, u - 1:u + 2].mean()
            half_w = max(4, int(projector.intrinsics.fx * props["width_m"] / forward))
            ring = np.concatenate([gray[v - 1:v + 2, max(u - 3 * half_w, 0):max(u - 2 * half_w, 1)].ravel(),
                                   gray[v - 1:v + 2, u + 2 * half_w:u + 3 * half_w].ravel()])
            assert centre < 0.85 * np.median(ring), (props["id"], k, forward, centre, np.median(ring))
            checked += 1
    assert checked >= 10


def test_bad_output_folder_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(app, ["sim", "drive", "--out", str(blocker / "sub"), "--duration", "3"])
    assert res.exit_code == 1
    assert "sim drive failed" in res.output
    res = CliRunner().invoke(app, ["sim", "drive", "--out", str(tmp_path / "odd"), "--width", "101"])
    assert res.exit_code == 1
    assert "must be even" in res.output
