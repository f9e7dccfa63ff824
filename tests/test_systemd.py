"""systemd units, the installer, and the agent's notify/watchdog protocol against a real datagram socket."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import config as agent_config
from edge_agent.runtime import sdnotify

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
VENV_BIN = Path(sys.executable).parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                   reason="systemd-analyze missing (Debian package systemd; bootstrap installs it)")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """KEY -> every value it is given (systemd allows repeats), across sections."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def runnable_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart pointed at this checkout's venv, so verify can check the commands exist."""
    out = tmp_path_factory.mktemp("units")
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/opt/road-monitor/venv/bin", str(VENV_BIN))
        (out / unit.name).write_text(text)
    shutil.copy(out / "fleet-server-ingest@.service", out / "fleet-server-ingest@1.service")
    return out


# ------------------------------------------------------------------------------------- unit files
@needs_analyze
@pytest.mark.parametrize("unit", ["edge-agent.service", "fleet-server.service", "fleet-server-ingest@1.service"])
def test_units_pass_systemd_analyze_verify(runnable_units: Path, unit: str) -> None:
    # verify exits 0 even for unknown keys and bad values, but says so on stderr: any output is a failure.
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", f"./{unit}"], cwd=runnable_units,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_analyze
def test_verify_would_catch_a_misspelt_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nWatchdogSecc=3\n")
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", "./bad.service"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert "WatchdogSecc" in result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", ["edge-agent.service", "fleet-server.service", "fleet-server-ingest@1.service"])
def test_units_are_sandboxed(runnable_units: Path, unit: str) -> None:
    # Exposure is systemd's 0 (locked down) .. 10 (unprotected) score; --threshold is in tenths.
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=25", f"./{unit}"],
                            cwd=runnable_units, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_agent_unit_has_the_operational_contract() -> None:
    s = unit_settings(UNITS / "edge-agent.service")
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["always"]
    assert s["StartLimitIntervalSec"] == ["0"]
    assert int(s["WatchdogSec"][0]) >= 10
    assert s["ProtectSystem"] == ["strict"]
    assert s["StateDirectory"] == ["edge-agent"]
    assert s["DevicePolicy"] == ["closed"]
    assert "PrivateDevices" not in s, "PrivateDevices hides the serial port and the camera"
    allowed = " ".join(s["DeviceAllow"])
    for device in ("video4linux", "ttyACM", "ttyUSB", "ttyAMA"):
        assert device in allowed
    assert set(s["SupplementaryGroups"][0].split()) >= {"dialout", "video"}
    assert "User" in s or s.get("DynamicUser") == ["yes"]
    assert any(v.startswith("mqtt-password:") for v in s["LoadCredential"])
    assert "--config" in s["ExecStart"][0]


def test_ingest_is_a_template_with_the_instance_in_the_command() -> None:
    s = unit_settings(UNITS / "fleet-server-ingest@.service")
    assert "%i" in s["ExecStart"][0]
    assert s["Restart"] == ["always"]


@pytest.mark.parametrize(("instance", "port"), [(1, 9101), (9, 9109), (10, 9110), (64, 9164)])
def test_ingest_instances_get_valid_metrics_ports(instance: int, port: int) -> None:
    """`--metrics-port 910%i` made 91010 for instance 10, past the last port: the unit gives a base that the
    server adds the instance to."""
    import typer

    from fleet_server.cli import _metrics_port

    command = unit_settings(UNITS / "fleet-server-ingest@.service")["ExecStart"][0].split()
    assert "--metrics-port" not in command and "910%i" not in " ".join(command)
    base = int(command[command.index("--metrics-port-base") + 1])
    assert _metrics_port(0, base, instance) == port
    assert _metrics_port(9200, 0, instance) == 9200, "a plain --metrics-port stays as given"
    with pytest.raises(typer.Exit):
        _metrics_port(0, 65500, 36)
    with pytest.raises(typer.Exit):
        _metrics_port(9200, 9100, instance)


# ------------------------------------------------------------------------------------ notify protocol
@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A real AF_UNIX datagram socket standing in for systemd's; NOTIFY_SOCKET points at it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_watchdog_status_reach_the_socket(notify_socket: socket.socket) -> None:
    assert sdnotify.ready("camera, gnss, model, outbox up")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=camera, gnss, model, outbox up"
    assert sdnotify.watchdog_ping()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert sdnotify.status("3 events queued")
    assert notify_socket.recv(4096) == b"STATUS=3 events queued"
    assert sdnotify.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"roadmon-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.watchdog_ping()
        assert sock.recv(64) == b"WATCHDOG=1"


def test_outside_systemd_every_call_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.watchdog_ping() is False


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.watchdog_ping() is False


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == pytest.approx(15.0)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # armed for another process (a parent shell)
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval_s() is None


# ---------------------------------------------------------------------------------------- installer
def dry_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(UNITS / "install.sh"), *args, "--dry-run"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def written_file(plan: str, path: str) -> str:
    """The content a dry run shows for `+ write PATH`."""
    lines = plan.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"+ write {path} "))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            break
        body.append(line[4:] if len(line) > 4 else "")
    return "\n".join(body) + "\n"


def test_installer_dry_run_agent_plan(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really a model")
    (tmp_path / "model.manifest.json").write_text("{}")
    result = dry_run("agent", "--device-id", "veh-042", "--broker", "mqtt.example.org:8884", "--model", str(model),
                     env={"ROADMON_PLATFORM": "raspberry-pi"})
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert "= platform: raspberry-pi" in plan
    # Only what the agent uses: gpsd-clients took ~950 MB of a Pi OS Lite card (GTK, matplotlib, gcc).
    apt = next(line for line in plan.splitlines() if "apt-get install" in line)
    assert "v4l-utils" in apt and "gpsd-clients" not in apt and "libgl1" not in apt, apt
    assert "systemd-sysusers /etc/sysusers.d/edge-agent.conf" in plan
    assert "-m venv /opt/road-monitor/venv" in plan
    # On PATH, so that `sudo edge-agent doctor` as the README writes it works (it was "command not found").
    assert "ln -sfn /opt/road-monitor/venv/bin/edge-agent /usr/local/bin/edge-agent" in plan
    assert "check the box with: sudo edge-agent doctor" in plan
    assert "/etc/systemd/system/edge-agent.service" in plan
    assert "systemctl enable --now edge-agent.service" in plan
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert f"/var/lib/edge-agent/models/{sha}.onnx" in plan
    assert f"ln -sfn {sha}.onnx /var/lib/edge-agent/models/current.onnx" in plan
    assert f"/var/lib/edge-agent/models/{sha}.manifest.json" in plan  # the detector finds it beside the target
    # The config it would write is one the agent accepts.
    toml = written_file(plan, "/etc/edge-agent/agent.toml")
    cfg = agent_config.parse(tomllib.loads(toml))
    assert cfg.device.id == "veh-042"
    assert cfg.uplink.host == "mqtt.example.org" and cfg.uplink.port == 8884
    assert cfg.detector.model == "/var/lib/edge-agent/models/current.onnx"
    assert cfg.uplink.password_file == "mqtt-password", "read from $CREDENTIALS_DIRECTORY (LoadCredential=)"
    assert cfg.uplink.ca_file is None


def test_installer_ca_goes_to_uplink_and_model_update(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    result = dry_run("agent", "--model", str(model), "--ca-file", str(ca))
    assert result.returncode == 0, result.stderr
    cfg = agent_config.parse(tomllib.loads(written_file(result.stdout, "/etc/edge-agent/agent.toml")))
    assert cfg.uplink.ca_file == cfg.model_update.ca_file == "/etc/edge-agent/ca.pem"
    assert f"install -m 0644 -o root -g root {ca} /etc/edge-agent/ca.pem" in result.stdout


def test_installer_sets_the_model_signing_key_and_url_prefix(tmp_path: Path) -> None:
    """The installer had no way to set model_update.public_key or url_prefix: every installed box took any model
    the server's broker login sent it, from any https host its CA trusts, and nothing said so."""
    model, key = tmp_path / "model.onnx", tmp_path / "signing.pub.pem"
    model.write_bytes(b"x")
    key.write_text("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n")
    prefix = "https://fleet.example.org/api/v1/models/"
    result = dry_run("agent", "--model", str(model), "--model-public-key", str(key), "--model-url-prefix", prefix,
                     "--broker", "mqtt.example.org")
    assert result.returncode == 0, result.stderr
    cfg = agent_config.parse(tomllib.loads(written_file(result.stdout, "/etc/edge-agent/agent.toml")))
    assert cfg.model_update.public_key == "/etc/edge-agent/model-signing.pub.pem"
    assert cfg.model_update.url_prefix == prefix
    assert f"install -m 0644 -o root -g root {key} /etc/edge-agent/model-signing.pub.pem" in result.stdout
    assert "WARNING" not in result.stderr
    bare = dry_run("agent", "--model", str(model))
    assert "no --model-public-key" in bare.stderr
    assert "no --broker" in bare.stderr and "no --broker" not in result.stderr  # localhost, for an image too
    assert agent_config.parse(tomllib.loads(written_file(bare.stdout, "/etc/edge-agent/agent.toml"))) \
        .model_update.public_key is None
    assert dry_run("agent", "--model-url-prefix", "http://fleet.example.org/").returncode == 2
    not_a_key = dry_run("agent", "--model", str(model), "--model-public-key", str(model))
    assert not_a_key.returncode == 2 and "cannot read a PEM public key" in not_a_key.stdout


def test_installer_dry_run_shows_every_step_past_a_missing_file(tmp_path: Path) -> None:
    """A password file that is not there (yet) stopped the dry run at `cannot read`, before the steps after it;
    now it is marked as a step that would fail, the plan goes on to the end, and the exit status says so."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    missing = tmp_path / "veh-042.password"
    result = dry_run("agent", "--device-id", "veh-042", "--model", str(model), "--mqtt-password-file", str(missing),
                     "--ca-file", str(tmp_path / "ca.crt"))
    assert result.returncode == 2
    plan = result.stdout
    assert f"! would fail: cannot read {missing} (for /etc/edge-agent/credentials/mqtt-password)" in plan
    assert f"! would fail: cannot read {tmp_path / 'ca.crt'}" in plan
    assert "systemctl enable --now edge-agent.service" in plan, "the steps after the missing file are shown"
    assert f"cannot read {missing}" in result.stderr and "2 step(s) that would fail" in result.stderr
    assert "done:" not in result.stdout  # it said "done" just before the steps that would fail
    server = dry_run("server", "--database-dsn-file", str(tmp_path / "dsn"))
    assert server.returncode == 2 and "fleet-server-ingest@2.service" in server.stdout
    assert f"! would fail: cannot read {tmp_path / 'dsn'}" in server.stdout
    real = subprocess.run(["bash", str(UNITS / "install.sh"), "agent", "--destdir", str(tmp_path / "img"),
                           "--no-venv", "--device-id", "veh-042", "--model", str(model), "--mqtt-password-file",
                           str(missing)],
                          capture_output=True, text=True, timeout=60)
    assert real.returncode == 2 and f"cannot read {missing}" in real.stderr, "a real run still stops there"
    assert "multi-user.target.wants" not in real.stdout


def test_installer_dry_run_changes_nothing(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = dry_run("agent", "--model", str(model), "--prefix", str(tmp_path / "opt"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_installer_jetson_gets_gpu_devices(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    result = dry_run("agent", "--model", str(model), env={"ROADMON_PLATFORM": "jetson"})
    assert result.returncode == 0, result.stderr
    dropin = written_file(result.stdout, "/etc/systemd/system/edge-agent.service.d/jetson.conf")
    assert "DeviceAllow=/dev/nvmap rw" in dropin
    if SYSTEMD_ANALYZE:  # the unit with its drop-in, as systemd would load them from its search path
        units = tmp_path / "units"
        (units / "edge-agent.service.d").mkdir(parents=True)
        (units / "edge-agent.service").write_text(
            (UNITS / "edge-agent.service").read_text().replace("/opt/road-monitor/venv/bin", str(VENV_BIN)))
        (units / "edge-agent.service.d" / "jetson.conf").write_text(dropin)
        verify = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", "edge-agent.service"], capture_output=True,
                                text=True, timeout=60, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"})
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


def test_installer_server_plan_enables_n_workers(tmp_path: Path) -> None:
    from fleet_server.config import load as load_server_config

    result = dry_run("server", "--workers", "3", "--url-base", "https://fleet.example.net")
    assert result.returncode == 0, result.stderr
    server_toml = tmp_path / "server.toml"
    server_toml.write_text(written_file(result.stdout, "/etc/fleet-server/server.toml"))
    server_cfg = load_server_config(server_toml)
    assert server_cfg.models.url_base == "https://fleet.example.net"
    assert str(server_cfg.database.dsn_file) == "database-dsn"  # relative: the unit runs in its credentials dir
    assert server_cfg.broker_files.passwd_file == Path("/etc/mosquitto/passwd")  # what docs/deploy.md sets up
    assert server_cfg.broker_files.acl_file == Path("/etc/mosquitto/acl")
    assert server_cfg.mqtt.username == "roadmon-server" and server_cfg.mqtt.port == 1883
    assert "ln -sfn /opt/road-monitor/venv/bin/fleet-server /usr/local/bin/fleet-server" in result.stdout
    assert ("systemctl enable --now fleet-server.service fleet-server-ingest@1.service "
            "fleet-server-ingest@2.service fleet-server-ingest@3.service") in result.stdout


def test_installer_rejects_bad_input() -> None:
    assert dry_run("agent", "--device-id", "bad id!").returncode != 0
    assert dry_run("server", "--workers", "zero").returncode != 0
    for workers in ("0", "65", "99999999999999999999999"):
        refused = dry_run("server", "--workers", workers)
        assert refused.returncode == 2 and "from 1 to 64" in refused.stderr, refused.stderr
    assert dry_run("server", "--workers", "64").returncode == 0
    result = dry_run("frobnicate")
    assert result.returncode != 0 and "unknown argument" in result.stderr


# ------------------------------------------------------------------- the agent itself under a fake systemd
def test_edge_agent_run_speaks_the_notify_protocol(tmp_path: Path) -> None:
    """`edge-agent run` with a 7 s video as camera: READY once up, WATCHDOG=1 at half of WatchdogSec while frames
    flow, silence once they stop (systemd would restart it), STOPPING=1 and a clean exit on SIGTERM."""
    import importlib.util
    import signal
    import time
    from datetime import UTC, datetime, timedelta

    spec = importlib.util.spec_from_file_location("doctor_helpers", Path(__file__).with_name("test_doctor.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)  # type: ignore[union-attr]
    (tmp_path / "tiny.onnx").write_bytes(helpers.tiny_detector(0.6))
    helpers.make_video(tmp_path / "road.mp4", frames=70)  # 10 fps: 7 s of frames
    start = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    (tmp_path / "drive.nmea").write_bytes(b"".join(helpers.nmea_epoch(start + timedelta(seconds=i))
                                                   for i in range(30)))
    (tmp_path / "state").mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[device]
id = "veh-notify"
state_dir = "{tmp_path / 'state'}"
[camera]
source = "{tmp_path / 'road.mp4'}"
no_frame_after_s = 1.0
[gnss]
source = "file"
file = "{tmp_path / 'drive.nmea'}"
[detector]
model = "{tmp_path / 'tiny.onnx'}"
[uplink]
enabled = false
""")
    sock_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "3000000"}  # WatchdogSec=3
        proc = subprocess.Popen([str(VENV_BIN / "edge-agent"), "run", "--config", str(config)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        messages: list[tuple[float, str]] = []

        def listen_until(done: Any, timeout_s: float) -> None:
            end = time.monotonic() + timeout_s
            while time.monotonic() < end and not done() and proc.poll() is None:
                with contextlib.suppress(TimeoutError):
                    messages.append((time.monotonic(), sock.recv(4096).decode()))

        def pings() -> list[float]:
            return [t for t, m in messages if m == "WATCHDOG=1"]

        listen_until(lambda: any(m.startswith("READY=1") for _, m in messages), 60)
        # The video runs out after 5 s; wait until the watchdog has been silent for longer than WatchdogSec.
        listen_until(lambda: len(pings()) >= 2 and time.monotonic() - pings()[-1] > 4.0, 30)
        proc.send_signal(signal.SIGTERM)
        listen_until(lambda: any(m == "STOPPING=1" for _, m in messages), 10)
        out, _ = proc.communicate(timeout=20)

    kinds = [m.split("\n")[0].split("=")[0] for _, m in messages]
    assert proc.returncode == 0, out[-2000:]
    assert kinds[0] == "READY", messages
    assert "camera ok" in messages[0][1] and "detector ok" in messages[0][1]
    ping_times = pings()
    assert len(ping_times) >= 2, messages
    assert max(b - a for a, b in itertools.pairwise(ping_times)) < 3.0, "gaps above WatchdogSec while healthy"
    assert kinds[-1] == "STOPPING"
    assert messages[-1][0] - ping_times[-1] > 3.0, "pings must stop once frames stop, so systemd restarts the agent"


def test_installer_destdir_stages_a_box_and_is_safe_to_rerun(tmp_path: Path) -> None:
    """A real (not dry) run into --destdir, as for an SD-card image: every file where the box expects it,
    secrets root-only, the model behind current.onnx loadable by the detector; a second run keeps edits."""
    import importlib.util

    from edge_agent.config.detector import DetectorConfig
    from edge_agent.detect.detector import load_detector
    from edge_agent.detect.model_update import ModelStore

    spec = importlib.util.spec_from_file_location("doctor_helpers", Path(__file__).with_name("test_doctor.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)  # type: ignore[union-attr]
    model, newer = tmp_path / "model.onnx", tmp_path / "newer.onnx"
    model.write_bytes(helpers.tiny_detector(0.6, version="1"))
    newer.write_bytes(helpers.tiny_detector(0.7, version="2"))
    (tmp_path / "pw").write_text("s3cret")
    root = tmp_path / "image"

    def install(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(UNITS / "install.sh"), "agent", "--destdir", str(root), "--no-venv",
                               "--device-id", "veh-img", "--broker", "mqtt.example.org", *extra],
                              capture_output=True, text=True, timeout=60)

    first = install("--model", str(model), "--mqtt-password-file", str(tmp_path / "pw"))
    assert first.returncode == 0, first.stdout + first.stderr
    cfg = agent_config.load(root / "etc/edge-agent/agent.toml")
    assert cfg.device.id == "veh-img" and cfg.uplink.host == "mqtt.example.org"
    secret = root / "etc/edge-agent/credentials/mqtt-password"
    assert secret.read_text() == "s3cret" and oct(secret.stat().st_mode & 0o777) == "0o600"
    assert oct((root / "etc/edge-agent/credentials").stat().st_mode & 0o777) == "0o700"
    store = ModelStore(root / "var/lib/edge-agent/models")
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert store.current_sha() == sha and os.readlink(store.current_link) == f"{sha}.onnx"  # relative link
    assert load_detector(DetectorConfig(model=str(store.current_link))).info.sha256 == sha
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == (UNITS / "edge-agent.service").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/edge-agent.service"
    if SYSTEMD_ANALYZE:  # the sysusers file creates the user with its groups at first boot
        users = subprocess.run(["systemd-sysusers", f"--root={root}", "--dry-run",
                                str(root / "etc/sysusers.d/edge-agent.conf")], capture_output=True, text=True)
        assert "Creating user 'edge-agent'" in users.stdout + users.stderr

    with (root / "etc/edge-agent/agent.toml").open("a") as f:
        f.write('\n[camera]\nsource = "/dev/video2"\n')  # the technician's edit
    again = install("--model", str(newer))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "= keep /etc/edge-agent/agent.toml" in again.stdout
    assert agent_config.load(root / "etc/edge-agent/agent.toml").camera.source == "/dev/video2"
    assert store.current_sha() == sha, "a model already in place (maybe remotely updated) is never replaced"
    assert secret.read_text() == "s3cret"
    # `sudo edge-agent doctor` as the docs write it: the link was left out with --no-venv ("command not found").
    assert os.readlink(root / "usr/local/bin/edge-agent") == "/opt/road-monitor/venv/bin/edge-agent"


def test_installer_refuses_images_that_would_not_run_and_honours_prefix(tmp_path: Path) -> None:
    """An image's venv made on the build host (its scripts start with #!<destdir>/opt/...) ran nowhere, after a
    "done"; an image without --device-id took the build host's name for every box; --prefix was left out of the
    units, which started a venv that was not there."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")

    def install(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(UNITS / "install.sh"), "agent", "--destdir", str(tmp_path / "img"),
                               "--model", str(model), "--broker", "mqtt.example.org", *args], capture_output=True,
                              text=True, timeout=60)

    (tmp_path / "pw").write_text("s3cret")
    venv = install("--device-id", "veh-1")
    assert venv.returncode == 2 and "--destdir needs --no-venv" in venv.stderr
    nameless = install("--no-venv")
    assert nameless.returncode == 2 and "--destdir needs --device-id" in nameless.stderr
    for prefix in ("opt/rel", "/opt/r&d"):  # relative: failed halfway; "&": broke the units' rewrite
        bad = install("--no-venv", "--device-id", "veh-1", "--prefix", prefix)
        assert bad.returncode == 2 and "--prefix must be an absolute path" in bad.stderr
    assert not (tmp_path / "img").exists()
    mute = install("--no-venv", "--device-id", "veh-1")  # a box that could never log in, after a "done"
    assert mute.returncode == 2 and "--destdir needs --mqtt-password-file" in mute.stderr
    moved = install("--no-venv", "--device-id", "veh-1", "--prefix", "/srv/roadmon", "--mqtt-password-file",
                    str(tmp_path / "pw"))
    assert moved.returncode == 0, moved.stderr
    unit = (tmp_path / "img/etc/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/srv/roadmon/venv/bin/edge-agent" in unit and "/opt/road-monitor" not in unit
    assert os.readlink(tmp_path / "img/usr/local/bin/edge-agent") == "/srv/roadmon/venv/bin/edge-agent"
    # The kept config names veh-1: another id with its password would never log in (it said "keep", "done").
    other = install("--no-venv", "--device-id", "veh-77", "--mqtt-password-file", str(tmp_path / "pw"))
    assert other.returncode == 2 and "names device 'veh-1', not 'veh-77'" in other.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck missing (Debian package shellcheck; "
                                                               "scripts/bootstrap.sh installs it)")
def test_installer_passes_shellcheck() -> None:
    result = subprocess.run(["shellcheck", "-x", str(UNITS / "install.sh")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout
