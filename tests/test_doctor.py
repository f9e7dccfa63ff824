"""`edge-agent doctor` against real things: video files as cameras, a pty as the GNSS receiver, real SQLite files,
the shared test broker, and the CLI itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pynmea2
import pytest

from edge_agent.doctor import Level, run_checks
from edge_agent.doctor.result import Options
from tests.mjpeg import mjpeg_camera
from tests.onnx_models import tiny_detector

EDGE_AGENT = str(Path(sys.executable).parent / "edge-agent")
FAST = Options(camera_seconds=2.0, camera_frames=15, gnss_seconds=4.0, model_runs=2)


# ---------------------------------------------------------------------------------------------- helpers
def write_config(tmp: Path, **sections: dict[str, Any]) -> Path:
    """An agent config in TMP with a state dir of its own; SECTIONS override/extend tables."""
    tables: dict[str, dict[str, Any]] = {"device": {"id": "veh-doc", "state_dir": str(tmp / "state")},
                                         "uplink": {"enabled": False}}
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    (tmp / "state").mkdir(exist_ok=True)
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_video(path: Path, frames: int = 20, flat: bool = False, size: tuple[int, int] = (320, 240)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    rng = np.random.default_rng(1)
    for i in range(frames):
        img = np.zeros((size[1], size[0], 3), np.uint8) if flat else rng.integers(0, 255, (size[1], size[0], 3),
                                                                                    dtype=np.uint8)
        if not flat:
            cv2.putText(img, str(i), (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        writer.write(img)
    writer.release()
    return path


def nmea_epoch(utc: datetime, fix: bool = True, hdop: float = 0.9) -> bytes:
    """One receiver epoch (GGA + RMC) at UTC, rendered and checksummed by pynmea2: a vehicle going east at its
    stated 22.4 kn (a receiver repeating one position at that speed is stuck), back at the start every 10 min."""
    hms = utc.strftime("%H%M%S.") + f"{utc.microsecond // 10000:02d}"
    if fix:
        lon = f"011{31.0 + (utc.timestamp() % 600) * 22.4 * 1852 / 3600 / 1236.6:07.4f}"  # 1' of lon: 1236.6 m
        gga = pynmea2.GGA("GP", "GGA", (hms, "4807.0380", "N", lon, "E", "1", "09", f"{hdop:.1f}",
                                        "545.4", "M", "46.9", "M", "", ""))
        rmc = pynmea2.RMC("GP", "RMC", (hms, "A", "4807.0380", "N", lon, "E", "22.4", "90.0",
                                        utc.strftime("%d%m%y"), "", "", "A"))
    else:
        gga = pynmea2.GGA("GP", "GGA", (hms, "", "", "", "", "0", "00", "", "", "", "", "", "", ""))
        rmc = pynmea2.RMC("GP", "RMC", (hms, "V", "", "", "", "", "", "", utc.strftime("%d%m%y"), "", "", "N"))
    return f"{gga}\r\n{rmc}\r\n".encode()


class FakeReceiver:
    """A pseudo-terminal the doctor opens like /dev/ttyACM0; a thread writes what a receiver would."""

    def __init__(self, payload: Any, every_s: float = 0.2) -> None:
        self.master, self.slave = os.openpty()
        self.port = os.ttyname(self.slave)
        self.payload = payload          # callable(epoch_index) -> bytes
        self.every_s = every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            data = self.payload(i)
            if data:
                try:
                    os.write(self.master, data)
                except OSError:
                    return
            i += 1
            time.sleep(self.every_s)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[FakeReceiver] = []

    def make(payload: Any, every_s: float = 0.2) -> FakeReceiver:
        r = FakeReceiver(payload, every_s)
        r.thread.start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def by_name(results: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in results}


# ------------------------------------------------------------------------------------------------ config
def test_invalid_config_is_red_and_the_rest_skipped(tmp_path: Path) -> None:
    path = write_config(tmp_path, uplink={"prot": 1883})
    results = by_name(run_checks(str(path), options=FAST))
    assert results["config"].level is Level.RED
    assert "uplink.prot" in results["config"].summary
    for name in ("camera", "gnss", "model", "outbox", "broker"):
        assert results[name].level is Level.SKIPPED


def test_missing_config_file(tmp_path: Path) -> None:
    results = by_name(run_checks(str(tmp_path / "nope.toml"), only=["outbox"], options=FAST))
    assert results["config"].level is Level.RED and "file not found" in results["config"].summary
    assert "--config" in results["config"].hint and "keys" not in results["config"].hint


def test_config_path_that_is_a_folder_or_binary(tmp_path: Path) -> None:
    binary = tmp_path / "agent.toml"
    binary.write_bytes(b"\xff\xfe[device]\n")
    for path, words in ((tmp_path, "is a folder"), (binary, "not UTF-8")):
        cfg = by_name(run_checks(str(path), only=["config"], options=FAST))["config"]
        assert cfg.level is Level.RED and words in cfg.summary and "check itself failed" not in cfg.summary


def test_a_queue_a_power_cut_can_empty_and_an_empty_config_are_called_so(tmp_path: Path) -> None:
    """outbox.synchronous = NORMAL fsyncs nothing until a checkpoint (~550 events): a power-cut emulation lost a
    whole drive. A config a power cut emptied ran as veh-001 with every default."""
    path = write_config(tmp_path, outbox={"synchronous": "NORMAL"})
    cfg = by_name(run_checks(str(path), only=["config"], options=FAST))["config"]
    assert cfg.level is Level.YELLOW and "outbox.synchronous is NORMAL" in cfg.summary and "power cut" in cfg.summary
    path.write_text("")
    cfg = by_name(run_checks(str(path), only=["config"], options=FAST))["config"]
    assert cfg.level is Level.RED and "is empty" in cfg.summary


# ------------------------------------------------------------------------------------------------ camera
def test_camera_from_a_video_file_delivers_frames(tmp_path: Path) -> None:
    video = make_video(tmp_path / "road.mp4")
    path = write_config(tmp_path, camera={"source": str(video)})
    cam = by_name(run_checks(str(path), only=["camera"], options=FAST))["camera"]
    assert cam.level is Level.GREEN, cam
    assert cam.data["width"] == 320 and cam.data["height"] == 240
    assert cam.data["frames"] == 15 and cam.data["fps"] > 0
    assert "320x240" in cam.summary


def test_black_camera_is_red(tmp_path: Path) -> None:
    # Nothing can be detected on it: red (it was amber, and doctor's exit code said all was well).
    video = make_video(tmp_path / "black.mp4", flat=True)
    path = write_config(tmp_path, camera={"source": str(video)})
    cam = by_name(run_checks(str(path), only=["camera"], options=FAST))["camera"]
    assert cam.level is Level.RED and "uniform" in cam.summary


def test_a_url_camera_that_never_answers_is_red_within_the_look_not_ffmpegs_30_s(tmp_path: Path) -> None:
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []  # accepted and never answered, as a hung IP camera's web server
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(8)], daemon=True).start()
    path = write_config(tmp_path, camera={"source": f"http://127.0.0.1:{listener.getsockname()[1]}/video"})
    started = time.monotonic()
    cam = by_name(run_checks(str(path), only=["camera"], options=FAST))["camera"]
    assert cam.level is Level.RED, cam
    assert time.monotonic() - started < 15  # FFmpeg's own timeout is 30 s; the look is FAST's 2 s
    listener.close()


def test_a_url_cameras_rate_is_not_judged_against_ffmpegs_default(tmp_path: Path) -> None:
    # An MJPEG camera streaming 6 fps was "below half the expected 25 fps": 25 is FFmpeg's default for MJPEG,
    # not the camera's (USB and exposure hints followed, for an IP camera).
    ok, jpeg = cv2.imencode(".jpg", (np.random.default_rng(1).integers(0, 255, (120, 160, 3))).astype(np.uint8))
    assert ok
    with mjpeg_camera(jpeg, fps=6, frames=60) as url:
        path = write_config(tmp_path, camera={"source": url})
        cam = by_name(run_checks(str(path), only=["camera"], options=FAST))["camera"]
    assert cam.level is Level.GREEN and "expected 25 fps" not in cam.summary, cam


def test_camera_that_does_not_open_is_red(tmp_path: Path) -> None:
    path = write_config(tmp_path, camera={"source": str(tmp_path / "missing.mp4")})
    cam = by_name(run_checks(str(path), only=["camera"], options=FAST))["camera"]
    assert cam.level is Level.RED and "cannot open" in cam.summary and cam.hint


# ------------------------------------------------------------------------------------------- calibration
def test_missing_intrinsics_file_is_red_as_run_refuses_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edge_agent.cli import app

    path = write_config(tmp_path, calibration={"intrinsics_file": str(tmp_path / "nope" / "cam.toml")})
    cal = by_name(run_checks(str(path), options=FAST, only=["calibration"]))["calibration"]
    assert cal.level is Level.RED and "intrinsics file not found" in cal.summary
    assert "calibrate intrinsics" in cal.hint
    run = CliRunner().invoke(app, ["run", "--config", str(path)])
    assert run.exit_code == 2 and "intrinsics file not found" in run.output  # the same start-up step


# A mount someone measured (calibrate mount's figures, set in the config).
MOUNT = {"height_m": 1.45, "pitch_deg": 9.2}


def test_calibration_green_and_a_camera_of_another_shape_yellow(tmp_path: Path) -> None:
    path = write_config(tmp_path, calibration={"hfov_deg": 72.0, **MOUNT})
    cal = by_name(run_checks(str(path), options=FAST, only=["calibration"]))["calibration"]
    assert cal.level is Level.GREEN and "sees the road" in cal.summary, cal
    assert cal.data["footprint"]["far"] > cal.data["footprint"]["near"] > 0
    video = make_video(tmp_path / "road.mp4")  # 320x240 (4:3) against the default 1280x720 calibration
    path = write_config(tmp_path, camera={"source": str(video)})
    cal = by_name(run_checks(str(path), options=FAST, only=["camera", "calibration"]))["calibration"]
    assert cal.level is Level.YELLOW and "another shape" in cal.summary


def test_a_box_never_calibrated_is_not_green(tmp_path: Path) -> None:
    """A fresh install following the deploy docs has no [calibration]: doctor read "inline calibration: 1280x720,
    fx 914 px, camera 1.40 m high, pitched 10.0 deg down ... OK" in green, the built-in defaults (an outside install
    on an arm64 box), and a technician could skip calibrating."""
    for calibration, guessed in (({}, ["lens (fx, hfov_deg)", "camera height_m", "camera pitch_deg"]),
                                 ({"fx": 900.0}, ["camera height_m", "camera pitch_deg"]),
                                 ({"hfov_deg": 72.0, "pitch_deg": 8.0}, ["camera height_m"])):
        path = write_config(tmp_path, calibration=calibration)
        cal = by_name(run_checks(str(path), options=FAST, only=["calibration"]))["calibration"]
        assert cal.level is Level.YELLOW and "built-in defaults" in cal.summary, cal
        assert cal.data["defaults"] == guessed and "calibrate mount" in cal.hint


def test_relative_paths_are_taken_beside_the_config_wherever_doctor_runs(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/calibration.md's own `intrinsics_file = "cam.toml"`: config check said ok, doctor (and run under
    systemd, whose working folder is /) looked for cam.toml in the current folder."""
    box = tmp_path / "etc"
    box.mkdir()
    (box / "cam.toml").write_text("width = 320\nheight = 240\nfx = 300.0\nfy = 300.0\ncx = 160.0\ncy = 120.0\n")
    make_video(box / "road.mp4")
    (box / "tiny.onnx").write_bytes(tiny_detector(0.6))
    (box / "drive.nmea").write_bytes(b"".join(nmea_epoch(datetime(2026, 5, 1, 10, 0, i, tzinfo=UTC))
                                              for i in range(3)))
    path = write_config(box, device={"state_dir": "state"}, calibration={"intrinsics_file": "cam.toml", **MOUNT},
                        camera={"source": "road.mp4"}, gnss={"source": "file", "file": "drive.nmea"},
                        detector={"model": "tiny.onnx"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    results = by_name(run_checks(str(path), options=FAST,
                                 only=["camera", "calibration", "gnss", "model", "outbox"]))
    for name in ("camera", "calibration", "gnss", "model", "outbox"):
        assert results[name].level is Level.GREEN, results[name]
    assert str(box / "cam.toml") in results["calibration"].summary


def test_an_upgrade_does_not_leave_the_queue_of_a_relative_state_dir_behind(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents before the rule above took `state_dir = "state"` from the working folder. After the upgrade the
    same config named a folder beside it, where `run` started an empty queue and left the old one's unsent
    events behind, while status and doctor looked at the new, empty one: every command now refuses, naming
    both folders."""
    from edge_agent.link.outbox import Outbox

    box, work = tmp_path / "etc", tmp_path / "work"
    box.mkdir()
    (work / "state").mkdir(parents=True)
    with Outbox(work / "state" / "outbox.db") as old:
        old.add_event({"schema": "roadmon.event/1", "event_id": "0190d7a2-0000-7000-8000-000000000001",
                       "severity": 0.5})
    path = write_config(box, device={"state_dir": "state"})
    monkeypatch.chdir(work)
    for command in (["config", "check", str(path)], ["status", "-c", str(path)], ["doctor", "-c", str(path), "--json"]):
        result = subprocess.run([EDGE_AGENT, *command], capture_output=True, text=True,
                                timeout=120)
        said = result.stdout + result.stderr
        assert result.returncode != 0, (command, said)
        assert str(work / "state" / "outbox.db") in said and str(box / "state") in said, (command, said)
    assert not (box / "state" / "outbox.db").exists()  # nothing started a second queue
    (box / "agent.toml").write_text(path.read_text().replace('state_dir = "state"', f'state_dir = "{work / "state"}"'))
    result = subprocess.run([EDGE_AGENT, "status", "-c", str(box / "agent.toml"), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert json.loads(result.stdout)["queue_depth"] == 1, result.stdout + result.stderr


def test_load_resolves_every_relative_path_field_and_keeps_special_values(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent import config as agent_config

    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text("pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.chdir(tmp_path)
    box = tmp_path / "etc"
    box.mkdir()
    path = write_config(box, device={"state_dir": "state"}, camera={"source": "v.mp4"},
                        gnss={"file": "d.nmea", "port": "ttyX"}, calibration={"intrinsics_file": "cam.toml"},
                        detector={"model": "m.onnx", "manifest": "m.json"},
                        model_update={"models_dir": "models", "ca_file": "ca.pem", "public_key": "key.pem"},
                        uplink={"ca_file": "broker-ca.pem", "cert_file": "c.pem", "key_file": "k.pem"})
    cfg = agent_config.load(path)
    beside = {f"{box / name}" for name in ("state", "v.mp4", "d.nmea", "ttyX", "cam.toml", "m.onnx", "m.json",
                                           "models", "ca.pem", "key.pem", "broker-ca.pem", "c.pem", "k.pem")}
    got = {cfg.device.state_dir, cfg.camera.source, cfg.gnss.file, cfg.gnss.port, cfg.calibration.intrinsics_file,
           cfg.detector.model, cfg.detector.manifest, cfg.model_update.models_dir, cfg.model_update.ca_file,
           cfg.model_update.public_key, cfg.uplink.ca_file, cfg.uplink.cert_file, cfg.uplink.key_file}
    assert got == beside
    assert cfg.outbox_path == box / "state" / "outbox.db"
    assert cfg.uplink.password_file == "mqtt-password", "systemd's credential stays relative: read from there"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert agent_config.load(path).uplink.password_file == str(box / "mqtt-password")

    pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"
    for camera in ("0", "/dev/video0", "rtsp://cam.local/stream", "v4l2src ! videoconvert ! appsink"):
        special = write_config(box, camera={"source": camera}, gnss={"port": "/dev/ttyUSB0"},
                               model_update={"public_key": pem})
        cfg = agent_config.load(special)
        assert (cfg.camera.source, cfg.gnss.port, cfg.detector.model) == (camera, "/dev/ttyUSB0", "bundled")
        assert cfg.model_update.public_key == pem and cfg.calibration.intrinsics_file == ""
        assert cfg.model_update.models_dir == "" and cfg.detector.manifest is None


# -------------------------------------------------------------------------------------------------- GNSS
def test_gnss_on_a_pty_with_a_fix(tmp_path: Path, receiver: Any) -> None:
    rx = receiver(lambda i: nmea_epoch(datetime.now(UTC)))  # a receiver on true time, sending as it goes
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port, "baud": 9600})
    results = by_name(run_checks(str(path), only=["gnss", "clock"], options=FAST))
    gnss = results["gnss"]
    assert gnss.level is Level.GREEN, gnss
    assert gnss.data["mode"] == 3 and gnss.data["sats"] == 9 and gnss.data["hdop"] == pytest.approx(0.9)
    assert gnss.data["lat"] == pytest.approx(48.1173, abs=1e-4)
    # The receiver's UTC is "now", so the clock check compares and finds them close.
    clock = results["clock"]
    assert "offset_vs_gnss_s" in clock.data
    assert abs(clock.data["offset_vs_gnss_s"]) < 1.9  # within AGREE_S, with room for a loaded machine
    assert clock.level is Level.GREEN, clock


def test_clock_far_from_gnss_time_is_red(tmp_path: Path, receiver: Any) -> None:
    rx = receiver(lambda i: nmea_epoch(datetime.now(UTC) - timedelta(hours=3)))
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port})
    clock = by_name(run_checks(str(path), only=["gnss", "clock"], options=FAST))["clock"]
    assert clock.level is Level.RED
    assert clock.data["offset_vs_gnss_s"] == pytest.approx(3 * 3600, abs=5)
    assert "+3.0 h vs GNSS" in clock.summary


@pytest.mark.parametrize("floor", [None, "2000-01-01"])
def test_a_receiver_past_its_week_rollover_is_corrected_or_named(tmp_path: Path, receiver: Any,
                                                                 floor: str | None) -> None:
    # An old receiver whose 1024-week window has passed says 2007 in 2026: every event was refused as too old,
    # and doctor told the technician to set the (right) system clock, from this receiver.
    rx = receiver(lambda i: nmea_epoch(datetime.now(UTC) - timedelta(weeks=1024)))
    gnss = {"source": "serial", "port": rx.port} | ({"date_floor": floor} if floor else {})
    clock = by_name(run_checks(str(write_config(tmp_path, gnss=gnss)), only=["gnss", "clock"], options=FAST))["clock"]
    if floor is None:  # the default floor for a live receiver is this release: the date is put right
        assert abs(clock.data["offset_vs_gnss_s"]) < 5, clock
    else:  # an operator's own floor is kept; doctor names the rollover and the setting
        assert clock.level is Level.RED and "1024 weeks behind" in clock.explanation, clock
        assert "gnss.date_floor" in clock.hint and "set the clock" not in clock.hint, clock


def test_clock_says_why_a_recordings_fix_is_not_compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GNSS line reported a 3D fix from a recording while the clock said "GNSS time needs a fix"."""
    monkeypatch.setattr("edge_agent.doctor.clock_check.ntp_state", lambda: (False, "no NTP here"))
    rec = tmp_path / "drive.nmea"
    rec.write_bytes(b"".join(nmea_epoch(datetime(2026, 5, 1, 10, 0, i, tzinfo=UTC)) for i in range(3)))
    path = write_config(tmp_path, gnss={"source": "file", "file": str(rec)})
    results = by_name(run_checks(str(path), only=["gnss", "clock"], options=FAST))
    assert results["gnss"].level is Level.GREEN and "3D fix" in results["gnss"].summary
    clock = results["clock"]
    assert clock.level is Level.YELLOW and "offset_vs_gnss_s" not in clock.data
    assert "recording" in clock.explanation and "not now" in clock.explanation, clock
    assert "needs a fix" not in clock.explanation + clock.hint
    alone = by_name(run_checks(str(path), only=["clock"], options=FAST))["clock"]
    assert "GNSS was not checked" in alone.explanation


def test_clock_offsets_read_in_units_a_person_reads():
    from edge_agent.doctor.clock_check import _offset_text

    assert [_offset_text(s) for s in (0.25, -4000.0, 17882327.87)] == ["+0.25 s", "-1.1 h", "+207.0 days"]


def test_gnss_without_a_fix_is_yellow(tmp_path: Path, receiver: Any) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    rx = receiver(lambda i: nmea_epoch(start + timedelta(seconds=i), fix=False))
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port})
    gnss = by_name(run_checks(str(path), only=["gnss"], options=FAST))["gnss"]
    assert gnss.level is Level.YELLOW and "no fix" in gnss.summary and "sky" in gnss.hint


def test_gnss_in_demo_mode_is_yellow(tmp_path: Path, receiver: Any) -> None:
    """A receiver in its simulator mode (GGA quality 8, RMC mode S) passed green as "3D fix": none of it is used."""
    start = datetime.now(UTC).replace(microsecond=0)

    def demo(i: int) -> bytes:
        text = nmea_epoch(start + timedelta(seconds=i)).decode()
        lines = [pynmea2.parse(line) for line in text.split()]
        lines[0].data[5], lines[1].data[11] = "8", "S"  # GGA quality, RMC FAA mode
        return "".join(f"{line}\r\n" for line in lines).encode()

    rx = receiver(demo)
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port})
    gnss = by_name(run_checks(str(path), only=["gnss"], options=FAST))["gnss"]
    assert gnss.level is Level.YELLOW and "not measured" in gnss.summary and "demo" in gnss.hint, gnss


def test_a_receiver_stuck_on_one_position_while_moving_is_red(tmp_path: Path, receiver: Any) -> None:
    """A receiver repeating one position with a fresh time and 22 kn: doctor said green, and every detection of
    those seconds was placed where it stuck."""
    start = datetime.now(UTC).replace(microsecond=0)
    stuck = nmea_epoch(start).decode()
    rx = receiver(lambda i: _restamped(stuck, start + timedelta(seconds=i)), every_s=0.5)
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port})
    gnss = by_name(run_checks(str(path), only=["gnss"], options=FAST))["gnss"]
    assert gnss.level is Level.RED and "repeats one position" in gnss.summary, gnss


def _restamped(epoch_text: str, utc: datetime) -> bytes:
    """EPOCH_TEXT's sentences with UTC's time of day, checksummed again."""
    lines = [pynmea2.parse(line) for line in epoch_text.split()]
    for line in lines:
        line.data[0] = utc.strftime("%H%M%S.00")
    return "".join(f"{line}\r\n" for line in lines).encode()


def test_an_rtk_receiver_is_named_with_its_centimetres(tmp_path: Path, receiver: Any) -> None:
    """An RTK receiver (GGA quality 4, RMC mode R) showed as "3D fix, ±3.6 m": HDOP x uere_m."""
    start = datetime.now(UTC).replace(microsecond=0)

    def rtk(i: int) -> bytes:
        lines = [pynmea2.parse(line) for line in nmea_epoch(start + timedelta(seconds=i)).decode().split()]
        lines[0].data[5], lines[1].data[11] = "4", "R"
        return "".join(f"{line}\r\n" for line in lines).encode()

    rx = receiver(rtk)
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port})
    gnss = by_name(run_checks(str(path), only=["gnss"], options=FAST))["gnss"]
    assert gnss.level is Level.GREEN and "RTK fixed" in gnss.summary and gnss.data["rtk"] == "rtk_fixed", gnss
    assert gnss.data["eph_m"] < 0.1


def test_a_frozen_receiver_is_red_and_its_clock_is_not_judged(tmp_path: Path, receiver: Any) -> None:
    """A receiver repeating one fix: doctor said amber "weak fix" and the clock check "+42 s: follow the
    receiver with chrony"."""
    stuck = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=42)
    rx = receiver(lambda i: nmea_epoch(stuck), every_s=0.5)  # pauses between epochs, as a receiver's
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port})
    checks = by_name(run_checks(str(path), only=["gnss", "clock"], options=FAST))
    gnss, clock = checks["gnss"], checks["clock"]
    assert gnss.level is Level.RED and "repeats one fix" in gnss.summary and "power-cycle" in gnss.hint, gnss
    # Not compared with the frozen time (words about NTP may name chrony, and the time now may hold a "42").
    assert "offset_vs_gnss_s" not in clock.data and clock.data.get("no_gnss_time") == "the receiver's output is " \
        "frozen" and "+42" not in clock.summary, clock


def test_gnss_garbage_means_wrong_baud(tmp_path: Path, receiver: Any) -> None:
    rx = receiver(lambda i: bytes(np.random.default_rng(i).integers(0, 256, 120, dtype=np.uint8)))
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port})
    gnss = by_name(run_checks(str(path), only=["gnss"], options=Options(gnss_seconds=1.5)))["gnss"]
    assert gnss.level is Level.RED and "no valid NMEA" in gnss.summary and "baud" in gnss.explanation
    from edge_agent import config as agent_config

    baud = agent_config.load(str(path)).gnss.baud  # the rate that failed is not advised again; 4800 is
    assert f"{baud}," not in gnss.hint and f"or {baud} " not in gnss.hint and "4800" in gnss.hint, gnss.hint


def test_gnss_sentences_with_wrong_checksums_are_not_called_a_baud_problem(tmp_path: Path, receiver: Any) -> None:
    def wrong_checksums(i: int) -> bytes:
        lines = nmea_epoch(datetime.now(UTC)).decode().split("\r\n")[:-1]
        return b"".join(f"{line[:-2]}{(int(line[-2:], 16) ^ 0x5A):02X}\r\n".encode() for line in lines)

    rx = receiver(wrong_checksums)
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port})
    gnss = by_name(run_checks(str(path), only=["gnss"], options=Options(gnss_seconds=1.5)))["gnss"]
    assert gnss.level is Level.RED and "checksum" in gnss.summary and gnss.data["junk_bytes"] == 0
    assert "baud" not in gnss.explanation.replace("baud rate is right", "") and "wiring" in gnss.explanation


def test_silent_port_and_missing_port_are_red(tmp_path: Path, receiver: Any) -> None:
    rx = receiver(lambda i: b"")
    path = write_config(tmp_path, gnss={"source": "serial", "port": rx.port})
    silent = by_name(run_checks(str(path), only=["gnss"], options=Options(gnss_seconds=1.0)))["gnss"]
    assert silent.level is Level.RED and "not one byte" in silent.summary
    path = write_config(tmp_path, gnss={"source": "serial", "port": str(tmp_path / "ttyNOPE")})
    missing = by_name(run_checks(str(path), only=["gnss"], options=FAST))["gnss"]
    assert missing.level is Level.RED and "cannot open" in missing.summary and "dialout" in missing.hint


def test_gnss_recording_file(tmp_path: Path) -> None:
    start = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    rec = tmp_path / "drive.nmea"
    rec.write_bytes(b"".join(nmea_epoch(start + timedelta(seconds=i)) for i in range(5)))
    path = write_config(tmp_path, gnss={"source": "file", "file": str(rec)})
    gnss = by_name(run_checks(str(path), only=["gnss"], options=FAST))["gnss"]
    assert gnss.level is Level.GREEN and gnss.data["sentences"] == 10


# ------------------------------------------------------------------------------------------------ outbox
def test_outbox_green_then_damaged_file_red(tmp_path: Path) -> None:
    from edge_agent.config.outbox import OutboxConfig
    from edge_agent.link.outbox import Outbox

    path = write_config(tmp_path, outbox={"budget_mb": 1, "free_floor_mb": 1})
    with Outbox(tmp_path / "state" / "outbox.db", OutboxConfig()) as ob:
        ob.add_coverage({"schema": "roadmon.coverage/1", "coverage_id": "0190a0b0-0000-7000-8000-000000000001",
                         "device_id": "veh-doc", "started_at": "2026-11-28T10:00:00.000Z",
                         "ended_at": "2026-11-28T10:01:00.000Z", "line": [[11.5, 48.1], [11.51, 48.1]],
                         "detector_active": True, "model_sha256": "0" * 64})
    good = by_name(run_checks(str(path), only=["outbox"], options=FAST))["outbox"]
    assert good.level is Level.GREEN, good
    assert good.data["unconfirmed"]["coverage"] == 1
    (tmp_path / "state" / "outbox.db").write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'state' / 'outbox.db'}{suffix}").unlink(missing_ok=True)
    bad = by_name(run_checks(str(path), only=["outbox"], options=FAST))["outbox"]
    assert bad.level is Level.RED and "damaged" in bad.summary


def test_outbox_without_room_is_red(tmp_path: Path) -> None:
    path = write_config(tmp_path, outbox={"free_floor_mb": 1e9})
    ob = by_name(run_checks(str(path), only=["outbox"], options=FAST))["outbox"]
    assert ob.level is Level.RED and "free_floor_mb" in ob.explanation


def test_outbox_advice_fits_why_the_folder_refuses_writes(tmp_path: Path) -> None:
    import errno

    from edge_agent.link.disk_guard import write_trouble
    from tests.test_outbox_full_disk import fill_disk, remount_read_only, tmpfs

    with tmpfs(tmp_path / "disk") as disk:
        path = write_config(tmp_path, outbox={"file": str(disk / "outbox.db")})
        filler = fill_disk(disk)
        full = by_name(run_checks(str(path), only=["outbox"], options=FAST))["outbox"]
        assert full.level is Level.RED and "full disk" in full.explanation
        assert "queue purge --confirmed" in full.hint and "owner" not in full.hint
        filler.unlink()
        remount_read_only(disk)
        ro = by_name(run_checks(str(path), only=["outbox"], options=FAST))["outbox"]
        assert ro.level is Level.RED and "read-only" in ro.explanation and "remount" in ro.hint
    # Root writes everywhere, so a missing permission is only shown here by its errno.
    what, hint = write_trouble(PermissionError(errno.EACCES, "Permission denied"))
    assert "not writable by this user" in what and "owner" in hint


def test_outbox_folder_missing_is_red(tmp_path: Path) -> None:
    path = write_config(tmp_path, outbox={"file": str(tmp_path / "gone" / "outbox.db")})
    ob = by_name(run_checks(str(path), only=["outbox"], options=FAST))["outbox"]
    assert ob.level is Level.RED and "does not exist" in ob.summary


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_json_and_exit_code(tmp_path: Path) -> None:
    video = make_video(tmp_path / "road.mp4")
    path = write_config(tmp_path, camera={"source": str(video)}, uplink={"enabled": True, "tls": False})
    ok = subprocess.run([EDGE_AGENT, "doctor", "--config", str(path), "--json", "--only", "camera,outbox",
                         "--camera-seconds", "2"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == ["config", "camera", "outbox"]
    assert {c["level"] for c in report["checks"]} == {"green"}

    path = write_config(tmp_path, camera={"source": str(tmp_path / "none.mp4")})
    bad = subprocess.run([EDGE_AGENT, "doctor", "--config", str(path), "--only", "camera"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "cannot open" in bad.stdout and "hint:" in bad.stdout
    # The reason comes first, before the table (it was one row of ten, the last line a tally), with what to do.
    first, second = bad.stdout.splitlines()[:2]
    assert first.startswith("FAIL camera: cannot open file source") and second.strip().startswith("what to do:")


def test_cli_refuses_a_listening_time_of_zero(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    for option in ("--camera-seconds", "--gnss-seconds"):
        for value in ("0", "-1"):
            out = subprocess.run([EDGE_AGENT, "doctor", "--config", str(path), option, value],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 2 and option in out.stderr


def test_cli_unknown_check_name(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    out = subprocess.run([EDGE_AGENT, "doctor", "--config", str(path), "--only", "camra"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "camra" in out.stdout + out.stderr


# ------------------------------------------------------------------------------------------------ broker
@pytest.mark.services
def test_broker_green_with_the_right_password(tmp_path: Path, service_info: Any, mqtt_device: Any) -> None:
    device_id, password = mqtt_device()
    (tmp_path / "pw").write_text(password + "\n")
    path = write_config(tmp_path, device={"id": device_id}, uplink={
        "enabled": True, "host": "127.0.0.1", "port": service_info.mqtt_port, "tls": False,
        "password_file": str(tmp_path / "pw")})
    broker = by_name(run_checks(str(path), only=["broker"], options=FAST))["broker"]
    assert broker.level is Level.GREEN, broker
    assert [s["name"] for s in broker.data["steps"]] == ["dns", "tcp", "tls", "auth", "publish"]
    assert "publish ok" in broker.summary


@pytest.mark.services
def test_broker_wrong_password_is_red_with_a_clear_message(tmp_path: Path, service_info: Any,
                                                           mqtt_device: Any) -> None:
    device_id, _ = mqtt_device()
    (tmp_path / "pw").write_text("not-the-password\n")
    path = write_config(tmp_path, device={"id": device_id}, uplink={
        "enabled": True, "host": "127.0.0.1", "port": service_info.mqtt_port, "tls": False,
        "password_file": str(tmp_path / "pw")})
    out = subprocess.run([EDGE_AGENT, "doctor", "--config", str(path), "--only", "broker", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    broker = json.loads(out.stdout)["checks"][-1]
    assert broker["level"] == "red"
    assert "auth failed" in broker["summary"] and "refused" in broker["summary"]
    assert "password" in broker["hint"]
    # The box's id is known to the server: a plain `device add` refuses it, --reissue prints new credentials.
    assert f"fleet-server device add --reissue {device_id}" in broker["hint"]


@pytest.mark.services
def test_broker_tls_against_a_plain_port_is_red(tmp_path: Path, service_info: Any, mqtt_device: Any) -> None:
    device_id, password = mqtt_device()
    (tmp_path / "pw").write_text(password)
    path = write_config(tmp_path, device={"id": device_id}, uplink={
        "enabled": True, "host": "127.0.0.1", "port": service_info.mqtt_port, "tls": True,
        "password_file": str(tmp_path / "pw")})
    broker = by_name(run_checks(str(path), only=["broker"], options=FAST))["broker"]
    assert broker.level is Level.RED and "tls failed" in broker.summary


def test_broker_nobody_listening_is_red(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    path = write_config(tmp_path, uplink={"enabled": True, "host": "127.0.0.1", "port": port, "tls": False})
    broker = by_name(run_checks(str(path), only=["broker"], options=FAST))["broker"]
    assert broker.level is Level.RED and "tcp failed" in broker.summary


# ------------------------------------------------------------------------------------------------- model
def test_model_loads_with_latency_and_provider(tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_detector(0.6, version="7"))
    video = make_video(tmp_path / "road.mp4")
    path = write_config(tmp_path, detector={"model": str(model)}, camera={"source": str(video)})
    results = by_name(run_checks(str(path), only=["camera", "model"], options=FAST))
    m = results["model"]
    assert m.level is Level.GREEN, m
    assert m.data["provider"] == "CPUExecutionProvider" and m.data["version"] == "7"
    assert m.data["latency_ms_median"] > 0 and m.data["frame"] == [320, 240]  # timed at the camera's size
    assert "ms per 320x240 frame" in m.summary


@pytest.mark.parametrize(("detector", "words"), [
    ({}, None),
    ({"copy_without_manifest": True}, "no manifest beside the model"),
    ({"score_threshold": 0.95}, "pothole, crack cut at 0.9 or more"),
    ({"class_names": ["D40", "D00"]}, "classes D40, D00 are in neither events.class_weights"),
])
def test_settings_that_make_the_model_find_less_are_amber(tmp_path: Path, detector: dict, words: str | None) -> None:
    # The bundled model copied without its manifest fell from 0.21 / 0.10 to 0.35 for both classes and found half
    # as many defects on a drive; a score threshold of 0.95 found none; RDD names got default severities: green.
    import shutil

    bundled = Path(__file__).resolve().parent.parent / "models" / "bundled" / "model.onnx"
    settings = dict(detector)
    if settings.pop("copy_without_manifest", False):
        shutil.copy(bundled, tmp_path / "other.onnx")
        settings["model"] = str(tmp_path / "other.onnx")
    path = write_config(tmp_path, detector=settings, camera={"width": 320, "height": 192})
    model = by_name(run_checks(str(path), only=["model"], options=FAST))["model"]
    if words is None:
        assert model.level is Level.GREEN and "pothole at 0.2" in model.summary, model
    else:
        assert model.level is Level.YELLOW and words in model.explanation, model


def test_model_is_timed_at_the_configured_frame_size_with_or_without_the_camera_check(tmp_path: Path) -> None:
    """A full run timed the camera check's frames (640x360), `--only model` 1280x720: two figures for one box."""
    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_detector(0.6))
    video = make_video(tmp_path / "road.mp4")  # 320x240
    path = write_config(tmp_path, detector={"model": str(model)}, camera={"source": str(video)})
    full = by_name(run_checks(str(path), options=FAST))["model"]
    alone = by_name(run_checks(str(path), only=["model"], options=FAST))["model"]
    assert full.data["frame"] == alone.data["frame"] == [320, 240]
    assert "ms per 320x240 frame" in alone.summary
    sized = write_config(tmp_path, detector={"model": str(model)}, camera={"source": "0", "width": 640,
                                                                              "height": 480})
    assert by_name(run_checks(str(sized), only=["model"], options=FAST))["model"].data["frame"] == [640, 480]
    calibrated = write_config(tmp_path, detector={"model": str(model)}, camera={"source": "0"},
                              calibration={"width": 800, "height": 600})
    assert by_name(run_checks(str(calibrated), only=["model"], options=FAST))["model"].data["frame"] == [800, 600]


def test_model_that_fails_its_check_is_red(tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(tiny_detector(0.0))
    path = write_config(tmp_path, detector={"model": str(model)})
    m = by_name(run_checks(str(path), only=["model"], options=FAST))["model"]
    assert m.level is Level.RED and "degenerate" in m.summary and m.hint


def test_gnss_through_gpsd_nmea_watch(tmp_path: Path) -> None:
    """A gpsd-speaking TCP server: doctor asks ?WATCH with nmea:true and judges the NMEA it relays."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    asked: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b'{"class":"VERSION","release":"3.22","proto_major":3,"proto_minor":14}\r\n')
            asked.append(conn.recv(200))
            for _ in range(10):
                try:
                    conn.sendall(nmea_epoch(datetime.now(UTC)))
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=serve, daemon=True).start()
    path = write_config(tmp_path, gnss={"source": "gpsd", "gpsd_host": "127.0.0.1",
                                        "gpsd_port": server.getsockname()[1]})
    gnss = by_name(run_checks(str(path), only=["gnss"], options=FAST))["gnss"]
    server.close()
    assert asked and b'"nmea": true' in asked[0]
    assert gnss.level is Level.GREEN, gnss
    assert gnss.data["source"].startswith("gpsd 127.0.0.1:")


def test_ntp_state_from_chronyc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chronyd does not run in the test machine: a stand-in chronyc prints what the real one prints."""
    from edge_agent.doctor.clock_check import ntp_state

    stub = tmp_path / "chronyc"
    for leap, expected in (("Normal", True), ("Not synchronised", False)):
        stub.write_text("#!/bin/sh\ncat <<'EOF'\nReference ID    : C0A80101 (192.168.1.1)\nStratum         : 3\n"
                        "System time     : 0.000123 seconds fast of NTP time\n"
                        f"Leap status     : {leap}\nEOF\n")
        stub.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
        synced, source = ntp_state()
        assert synced is expected
        assert source.startswith("chrony")


@pytest.mark.services
def test_broker_login_from_the_systemd_credentials_directory(tmp_path: Path, service_info: Any, mqtt_device: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What the unit does: LoadCredential=mqtt-password:... puts the file in $CREDENTIALS_DIRECTORY, and the
    config's default password_file = "mqtt-password" is found there."""
    device_id, password = mqtt_device()
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text(password)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = write_config(tmp_path, device={"id": device_id}, uplink={
        "enabled": True, "host": "127.0.0.1", "port": service_info.mqtt_port, "tls": False})
    broker = by_name(run_checks(str(path), only=["broker"], options=FAST))["broker"]
    assert broker.level is Level.GREEN, broker


def test_config_warns_about_unreadable_update_files(tmp_path: Path) -> None:
    path = write_config(tmp_path, uplink={"enabled": True, "tls": False},
                        model_update={"ca_file": str(tmp_path / "no-ca.pem")})
    cfg = by_name(run_checks(str(path), only=["config"], options=FAST))["config"]
    assert cfg.level is Level.YELLOW and "model_update.ca_file" in cfg.summary


def test_an_intrinsics_file_with_a_doubtful_fit_is_yellow(tmp_path: Path) -> None:
    """`calibrate intrinsics` writes what its photos could not pin down into the file; doctor was green on a fit
    that placed potholes metres off (RMS 0.30 px from photos facing the camera)."""
    from calibration import Intrinsics
    from calibration.config import intrinsics_text

    cam = tmp_path / "cam.toml"
    cam.write_text(intrinsics_text(cam, Intrinsics.from_hfov(1280, 720, 70), 0.3, 6,
                                   ["every photo shows the board nearly face-on (largest tilt 4 deg)"]))
    path = write_config(tmp_path, calibration={"intrinsics_file": str(cam), **MOUNT})
    cal = by_name(run_checks(str(path), options=FAST, only=["calibration"]))["calibration"]
    assert cal.level is Level.YELLOW and "doubtful" in cal.summary and "face-on" in cal.explanation, cal
    cam.write_text(intrinsics_text(cam, Intrinsics.from_hfov(1280, 720, 70), 0.3, 16))
    cal = by_name(run_checks(str(path), options=FAST, only=["calibration"]))["calibration"]
    assert cal.level is Level.GREEN, cal
