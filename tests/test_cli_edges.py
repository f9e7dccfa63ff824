"""A field technician's edge cases against `edge-agent`: each bad value or odd file is one clear line and
exit 2 (a bad argument) or 1 (the receiver, a file), never a traceback, a hang or exit 0."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.commands import finite
from edge_agent.config.outbox import OutboxConfig
from edge_agent.link.outbox import Outbox
from tests.conftest import free_port
from tests.test_gnss_source import FakeReceiver

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def refused(result, code: int, *words: str) -> None:
    """Exit CODE through typer (no exception escaping), with WORDS in what the technician reads."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, (word, result.output)


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "outbox.db"
    with Outbox(path, OutboxConfig(synchronous="NORMAL")):
        pass
    return path


# --- 2. GNSS settings from the command line: one line naming the option, exit 2


@pytest.mark.parametrize(("args", "words"), [
    (["--port", "/dev/null", "--baud", "-5"], "--baud -5"),
    (["--port", "/dev/null", "--baud", "0"], "--baud 0"),  # was silently "the config's baud"
    (["--gpsd", "127.0.0.1:99999"], "--gpsd 127.0.0.1:99999"),
])
def test_gps_monitor_names_the_option_a_setting_refuses(args: list[str], words: str) -> None:
    refused(invoke("gps", "monitor", *args, "--seconds", "1"), 2, words)


# --- 4. numbers without an end: refused with the usual "Invalid value for '--x'" line


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e9"])
def test_gps_monitor_seconds_must_end(value: str, tmp_path: Path) -> None:
    refused(invoke("gps", "monitor", "--port", str(tmp_path / "none"), "--seconds", value), 2, "'--seconds'")


@pytest.mark.parametrize(("args", "option"), [
    (["doctor", "--only", "config", "--gnss-seconds", "inf"], "'--gnss-seconds'"),
    (["doctor", "--only", "config", "--gnss-seconds", "nan"], "'--gnss-seconds'"),
    (["doctor", "--only", "config", "--camera-seconds", "1e9"], "'--camera-seconds'"),
    (["model", "bench", "--model", "{tmp}/none.onnx", "--runs", "1e23"], "'--runs'"),
    (["model", "bench", "--model", "{tmp}/none.onnx", "--runs", str(10**23)], "'--runs'"),
    (["model", "quantize", "{tmp}/none.onnx", "{tmp}/out.onnx", "--calib", "{tmp}", "--runs", str(10**23)],
     "'--runs'"),
    (["model", "quantize", "{tmp}/none.onnx", "{tmp}/out.onnx", "--calib", "{tmp}", "--calib-images",
      str(10**23)], "'--calib-images'"),
    (["replay", "--video", "{tmp}/none.mp4", "--nmea", "{tmp}/none.nmea", "--drain-s", "inf"], "'--drain-s'"),
    (["sim", "drive", "--out", "{tmp}/drive", "--duration", "inf"], "'--duration'"),
    (["sim", "drive", "--out", "{tmp}/drive", "--potholes", str(10**23)], "'--potholes'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_unbounded_numbers_are_refused(tmp_path: Path, args: list[str], option: str) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    refused(invoke(*args, "--config", str(tmp_path / "none.toml")) if args[0] == "doctor" else invoke(*args),
            2, option)
    assert not (tmp_path / "drive").exists() and not (tmp_path / "out.onnx").exists()


def test_finite_refuses_nan_and_infinity() -> None:
    # Ranges checked with click's FloatRange (older typer) let NaN through: the callback stops it there.
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(typer.BadParameter, match="not a finite number"):
            finite(value)
    assert finite(2.5) == 2.5 and finite(None) is None


# --- 5. a negative seed is a bad argument (exit 2), not a failed drive (exit 1)


def test_sim_drive_refuses_a_negative_seed(tmp_path: Path) -> None:
    refused(invoke("sim", "drive", "--out", str(tmp_path / "drive"), "--seed", "-1"), 2, "'--seed'")
    refused(invoke("sim", "drive", "--out", str(tmp_path / "drive"), "--seed", str(2**32)), 2, "'--seed'")
    assert not (tmp_path / "drive").exists()


def test_sim_drive_starts_now_when_asked(tmp_path: Path) -> None:
    """Every drive was dated 2026-05-12, which a server with the default ingest.horizon_days (30) refuses: the
    README's replay --uplink of a fresh drive exited 4."""
    import json
    from datetime import UTC, datetime

    refused(invoke("sim", "drive", "--out", str(tmp_path / "bad"), "--start", "2026-12-07T08:00:00"), 2, "no zone")
    before = datetime.now(UTC)
    made = invoke("sim", "drive", "--out", str(tmp_path / "drive"), "--duration", "3", "--start", "now")
    assert made.exit_code == 0, made.output
    start = datetime.fromisoformat(json.loads((tmp_path / "drive" / "drive.json").read_text())["start_utc"])
    assert abs((start - before).total_seconds()) < 60
    first_rmc = next(line for line in (tmp_path / "drive" / "drive.nmea").read_text().splitlines() if "RMC" in line)
    assert start.strftime("%d%m%y") in first_rmc


# --- 6. a folder where a file belongs says so, not "not found"


def test_replay_says_a_folder_is_a_folder(tmp_path: Path) -> None:
    nmea = tmp_path / "drive.nmea"
    nmea.write_text("")
    video = tmp_path / "video.mp4"
    video.write_bytes(b"")
    refused(invoke("replay", "--video", str(tmp_path), "--nmea", str(nmea)), 2,
            f"video {tmp_path} is a folder, not a file")
    refused(invoke("replay", "--video", str(video), "--nmea", str(tmp_path)), 2,
            f"NMEA {tmp_path} is a folder, not a file")


@pytest.mark.parametrize("command", [["model", "info"], ["model", "bench", "--runs", "1"]])
def test_model_commands_say_a_folder_is_a_folder(tmp_path: Path, command: list[str]) -> None:
    result = invoke(*command, "-m", str(tmp_path))
    refused(result, 2, f"{tmp_path} is a folder, not a file")
    assert "not found" not in result.output


def test_model_bench_times_an_installed_model_without_its_twin(tmp_path: Path) -> None:
    """install.sh places the INT8 model alone as models/<sha256>.onnx: `model bench` on it exited 2, "model file
    not found: .../model-fp32.onnx", the manifest's twin that was never copied."""
    import json
    import shutil

    bundled = Path(__file__).resolve().parents[1] / "models" / "bundled"
    placed = tmp_path / "models" / "abc.onnx"
    placed.parent.mkdir()
    shutil.copy(bundled / "model.onnx", placed)
    shutil.copy(bundled / "model.manifest.json", placed.with_suffix(".manifest.json"))
    result = invoke("model", "bench", "-m", str(placed), "--runs", "1", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    assert "timing it alone" in result.output
    timed = json.loads(result.stdout.strip().splitlines()[-1])
    assert "fp32" not in timed and next(iter(timed.values()))["median_ms"] > 0


# --- 7. a receiver that cannot be reached ends monitor with the reason, exit 1


def test_gps_monitor_fails_on_a_missing_port(tmp_path: Path) -> None:
    missing = tmp_path / "ttyNONE"
    refused(invoke("gps", "monitor", "--port", str(missing), "--seconds", "1"), 1,
            f"cannot open {missing}: no such device")


def test_gps_monitor_fails_on_something_that_is_no_serial_port(tmp_path: Path) -> None:
    plain = tmp_path / "plain-file"
    plain.write_text("")
    refused(invoke("gps", "monitor", "--port", str(plain), "--seconds", "1"), 1, f"cannot open {plain}")


def test_gps_monitor_fails_when_gpsd_does_not_answer() -> None:
    port = free_port()  # nothing listens there
    refused(invoke("gps", "monitor", "--gpsd", f"127.0.0.1:{port}", "--seconds", "1"), 1,
            f"cannot connect to gpsd at 127.0.0.1:{port}")


def test_gps_monitor_still_watches_a_port_that_opens(tmp_path: Path) -> None:
    # Opened once to check it, then by the reader: the fixes sent after that still arrive.
    receiver = FakeReceiver(tmp_path / "gps0")
    receiver.plug()

    def feed() -> None:
        time.sleep(0.5)
        for _ in range(15):
            receiver.send_epoch()
            time.sleep(0.1)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        result = runner.invoke(app, ["gps", "monitor", "--port", str(receiver.link), "--baud", "115200",
                                     "--seconds", "2.5"], env={"COLUMNS": "200"})
    finally:
        feeder.join()
        receiver.unplug()
    assert result.exit_code == 0, result.output
    assert "48.1173000" in result.output and "3D" in result.output


# --- 3. a status file of the wrong shape


@pytest.mark.parametrize("content", [{"health": 5}, {"state": "online", "health": 5},
                                     {"state": "online", "fix": "48.1,11.5"},
                                     {"state": "online", "dropped": [1], "sent_at": 7}])
def test_status_file_of_the_wrong_shape_says_so(outbox: Path, content: dict) -> None:
    status_file = outbox.parent / "agent-status.json"
    status_file.write_text(json.dumps(content))
    args = ("status", "--outbox", str(outbox), "--config", str(outbox.parent / "none.toml"))
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output  # as a status file of random bytes: the queue is still shown
    info = json.loads(result.stdout)
    assert f"the status file {status_file} is not what the agent writes" in info["broker"]
    assert info["queue_depth"] == 0 and info["gnss"] == {"state": None, "last_fix_age_s": None, "problem": None}
    table = invoke(*args)
    assert table.exit_code == 0 and table.exception is None, table.output
    assert "not what the agent writes" in " ".join(table.output.split())


def test_the_version_is_one_option_away() -> None:
    """`edge-agent --version` was "No such option", and nothing else on the box said which release ran."""
    from edge_agent import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"edge-agent {__version__}"


def test_lab_commands_name_the_extra_a_box_lacks(monkeypatch, tmp_path: Path) -> None:
    """onnx, sympy and matplotlib (~220 MB) left the box's [edge] extra for [lab]: the commands that need them
    say so instead of an ImportError traceback."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("onnx", "sympy", "matplotlib")
                        else real(name, *a))
    (tmp_path / "calib").mkdir()
    refused(invoke("model", "quantize", str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), "--calib",
                   str(tmp_path / "calib")), 2, "needs onnx, sympy", "[edge,lab]")


def test_a_status_file_from_ahead_of_the_clock_says_so(outbox: Path) -> None:
    """A box whose clock was stepped back (NTP, a fake-hwclock restored) showed its own status file as
    '(-7254528 s ago)'."""
    ahead = (datetime.now(UTC) + timedelta(days=84)).isoformat(timespec="seconds").replace("+00:00", "Z")
    (outbox.parent / "agent-status.json").write_text(json.dumps({"state": "online", "sent_at": ahead}))
    result = runner.invoke(app, ["status", "--outbox", str(outbox), "--config", str(outbox.parent / "none.toml")],
                           env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "84 days ahead of this box's clock" in text, text
    assert "-7" not in text and "s ago" not in text
