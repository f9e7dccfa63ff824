"""Remote model update against a real HTTPS server (self-signed CA made here), real files and real ONNX models."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from onnx import TensorProto, helper

from edge_agent.config.detector import DetectorConfig
from edge_agent.config.model_update import ModelUpdateConfig
from edge_agent.detect.model_update import ModelStore, ModelUpdater, detector_sanity_check, effective_model, sign_file
from edge_agent.health import HealthBoard
from tests.onnx_models import tiny_detector

# ---------------------------------------------------------------------------------------- fixtures


def tiny_onnx(scale: float) -> bytes:
    """A real, loadable ONNX model (images -> images * scale); different scales give different files."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 32, 32])
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["images", "k"], ["out"])], "tiny", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def ort_sanity_check(path: Path) -> dict[str, Any]:
    """Load in ONNX Runtime and run one inference, as the detector's sanity check does."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"images": np.ones((1, 3, 32, 32), np.float32)})[0]
    if not np.isfinite(out).all():
        raise ValueError("non-finite output")
    return {"provider": sess.get_providers()[0], "name": path.name}


def make_tls(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("roadmon test CA")).issuer_name(name("roadmon test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(san, critical=False).sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@dataclass
class ModelServer:
    """HTTPS file server like the fleet server's GET /api/v1/models/{sha256}.onnx, with Range support and
    a switch to cut connections part-way (`cut_after` bytes, for the first `cuts` responses)."""

    base: str
    ca: Path
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int = 0
    cuts: int = 0
    requests: list[str | None] = field(default_factory=list)

    def publish(self, data: bytes) -> tuple[str, str]:
        sha = hashlib.sha256(data).hexdigest()
        self.files[f"/api/v1/models/{sha}.onnx"] = data
        return f"{self.base}/api/v1/models/{sha}.onnx", sha


@pytest.fixture
def model_server(tmp_path: Path) -> Iterator[ModelServer]:
    ca, cert, key = make_tls(tmp_path)
    state = ModelServer(base="", ca=ca)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append(self.headers.get("Range"))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if rng := self.headers.get("Range"):
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            body = data[start:]
            if state.cuts > 0:
                state.cuts -= 1
                self.wfile.write(body[: state.cut_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    state.base = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    """A models folder whose current model is tiny_onnx(1.0), as install.sh leaves it."""
    st = ModelStore(tmp_path / "models")
    st.ensure()
    data = tiny_onnx(1.0)
    sha = hashlib.sha256(data).hexdigest()
    st.path_of(sha).write_bytes(data)
    st.swap(sha)
    return st


def updater(store: ModelStore, server: ModelServer, activate: Any = None, **cfg: Any) -> ModelUpdater:
    config = ModelUpdateConfig(ca_file=str(server.ca), attempts=cfg.pop("attempts", 3), **cfg)
    return ModelUpdater(config, store, ort_sanity_check, activate=activate, health=HealthBoard())


def assert_untouched(store: ModelStore, sha_before: str) -> None:
    assert store.current_sha() == sha_before
    assert store.current_link.resolve().read_bytes() == tiny_onnx(1.0)
    assert list(store.incoming.iterdir()) == [], "partial downloads must not be left behind"


# ------------------------------------------------------------------------------------------- tests
def test_good_update_swaps_and_keeps_previous(store: ModelStore, model_server: ModelServer) -> None:
    old = store.current_sha()
    url, sha = model_server.publish(tiny_onnx(2.0))
    activated: list[str] = []
    result = updater(store, model_server, activate=activated.append).handle(
        {"url": url, "sha256": sha, "name": "potholes", "version": "2.0", "request_id": "r1"})
    assert result["ok"] is True and result["status"] == "installed", result
    assert result["sha256"] == sha and result["previous_sha256"] == old and result["request_id"] == "r1"
    assert store.current_sha() == sha and store.previous_sha() == old
    assert store.current_link.resolve().read_bytes() == tiny_onnx(2.0)
    assert store.previous_link.resolve().read_bytes() == tiny_onnx(1.0)
    assert activated == [str(store.current_link)]
    assert json.loads(store.meta_path(sha).read_text())["version"] == "2.0"
    # A repeated command is harmless.
    again = updater(store, model_server).handle({"url": url, "sha256": sha})
    assert again["ok"] and again["status"] == "already_current"


def test_wrong_sha_is_refused_and_nothing_changes(store: ModelStore, model_server: ModelServer) -> None:
    old = store.current_sha()
    url, _ = model_server.publish(tiny_onnx(3.0))
    wrong = hashlib.sha256(b"something else").hexdigest()
    model_server.files[url.removeprefix(model_server.base).replace(url.rsplit("/", 1)[1], f"{wrong}.onnx")] = (
        tiny_onnx(3.0))
    result = updater(store, model_server).handle({"url": url.rsplit("/", 1)[0] + f"/{wrong}.onnx", "sha256": wrong})
    assert result["ok"] is False and result["status"] == "failed"
    assert "sha256 mismatch" in result["reason"]
    assert_untouched(store, old)


def test_signature_required_when_a_key_is_configured(store: ModelStore, model_server: ModelServer,
                                                     tmp_path: Path) -> None:
    old = store.current_sha()
    release_key = ed25519.Ed25519PrivateKey.generate()
    other_key = ed25519.Ed25519PrivateKey.generate()
    pub = tmp_path / "release.pub.pem"
    pub.write_bytes(release_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    data = tiny_onnx(4.0)
    url, sha = model_server.publish(data)
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(data)

    def pem(key: ed25519.Ed25519PrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    up = updater(store, model_server, public_key=str(pub))
    forged = up.handle({"url": url, "sha256": sha, "signature": sign_file(pem(other_key), model_file)})
    assert forged["status"] == "failed" and "bad signature" in forged["reason"]
    assert_untouched(store, old)
    unsigned = up.handle({"url": url, "sha256": sha})
    assert unsigned["status"] == "failed" and "signature is required" in unsigned["reason"]
    garbage = up.handle({"url": url, "sha256": sha, "signature": "!!not base64!!"})
    assert garbage["status"] == "failed" and "base64" in garbage["reason"]
    assert_untouched(store, old)

    good = up.handle({"url": url, "sha256": sha, "signature": sign_file(pem(release_key), model_file)})
    assert good["ok"], good
    assert store.current_sha() == sha


def test_model_failing_the_sanity_check_is_not_swapped_in(store: ModelStore, model_server: ModelServer) -> None:
    old = store.current_sha()
    url, sha = model_server.publish(b"\x08\x07 this is not an ONNX model" * 50)
    result = updater(store, model_server).handle({"url": url, "sha256": sha})
    assert result["status"] == "failed" and "sanity check" in result["reason"]
    assert_untouched(store, old)
    assert not store.path_of(sha).exists()


def test_model_that_fails_to_start_is_rolled_back(store: ModelStore, model_server: ModelServer) -> None:
    old = store.current_sha()
    previous_before = store.previous_sha()
    url, sha = model_server.publish(tiny_onnx(5.0))
    calls: list[bytes] = []

    def activate(path: str) -> None:
        calls.append(Path(path).resolve().read_bytes())
        if len(calls) == 1:
            raise RuntimeError("TensorRT engine build failed")

    result = updater(store, model_server, activate=activate).handle({"url": url, "sha256": sha})
    assert result["ok"] is False and result["status"] == "rolled_back"
    assert "TensorRT engine build failed" in result["reason"]
    assert store.current_sha() == old and store.previous_sha() == previous_before
    assert calls == [tiny_onnx(5.0), tiny_onnx(1.0)], "the new model was tried, then the old one reloaded"
    assert "failure" in json.loads(store.meta_path(sha).read_text())


def test_interrupted_download_resumes_with_range(store: ModelStore, model_server: ModelServer) -> None:
    data = tiny_onnx(6.0)
    url, sha = model_server.publish(data)
    model_server.cut_after, model_server.cuts = len(data) // 3, 2
    result = updater(store, model_server, attempts=4).handle({"url": url, "sha256": sha})
    assert result["ok"], result
    assert store.current_link.resolve().read_bytes() == data
    assert model_server.requests[0] is None
    assert model_server.requests[1:] == [f"bytes={len(data) // 3}-", f"bytes={2 * (len(data) // 3)}-"]


def test_download_interrupted_every_time_fails_cleanly(store: ModelStore, model_server: ModelServer) -> None:
    old = store.current_sha()
    url, sha = model_server.publish(tiny_onnx(7.0))
    model_server.cut_after, model_server.cuts = 10, 100
    result = updater(store, model_server, attempts=2).handle({"url": url, "sha256": sha})
    assert result["status"] == "failed" and "interrupted 2 times" in result["reason"]
    assert_untouched(store, old)


def test_untrusted_server_certificate(store: ModelStore, model_server: ModelServer) -> None:
    old = store.current_sha()
    url, sha = model_server.publish(tiny_onnx(8.0))
    up = ModelUpdater(ModelUpdateConfig(attempts=1), store, ort_sanity_check)  # system CAs only
    result = up.handle({"url": url, "sha256": sha})
    assert result["status"] == "failed" and "not trusted" in result["reason"]
    assert_untouched(store, old)


@pytest.mark.parametrize(("payload", "reason"), [
    ({"url": "http://example.org/m.onnx", "sha256": "a" * 64}, "https"),
    ({"url": "https://example.org/m.onnx", "sha256": "xyz"}, "64 hex"),
    ({"sha256": "a" * 64}, "missing 'url'"),
    ("not an object", "JSON object"),
])
def test_bad_commands_are_refused(store: ModelStore, model_server: ModelServer, payload: Any, reason: str) -> None:
    result = updater(store, model_server).handle(payload)
    assert result["status"] == "refused" and reason in result["reason"]


def test_url_prefix_and_pinned_model(store: ModelStore, model_server: ModelServer) -> None:
    url, sha = model_server.publish(tiny_onnx(9.0))
    outside = updater(store, model_server, url_prefix="https://fleet.example.org/").handle({"url": url, "sha256": sha})
    assert outside["status"] == "refused" and "url_prefix" in outside["reason"]
    pinned = ModelUpdater(ModelUpdateConfig(), store, ort_sanity_check, pinned_model="/opt/m.onnx")
    result = pinned.handle({"url": url, "sha256": sha})
    assert result["status"] == "refused" and "pinned" in result["reason"]


def test_old_models_are_pruned_but_current_and_previous_stay(store: ModelStore, model_server: ModelServer) -> None:
    shas = []
    for scale in (10.0, 11.0, 12.0, 13.0):
        url, sha = model_server.publish(tiny_onnx(scale))
        assert updater(store, model_server, keep=2).handle({"url": url, "sha256": sha})["ok"]
        shas.append(sha)
    files = {p.stem for p in store.root.glob("*.onnx") if not p.is_symlink()}
    assert files == {shas[-1], shas[-2]}
    assert store.current_sha() == shas[-1] and store.previous_sha() == shas[-2]


def test_signature_helper_matches_openssl_format(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    f = tmp_path / "m.onnx"
    f.write_bytes(b"model bytes")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key.public_key().verify(base64.b64decode(sign_file(pem, f)), b"model bytes")
    assert onnx.load_from_string(tiny_onnx(1.0)).graph.node[0].op_type == "Mul"


def test_real_detector_check_gates_the_swap_and_reads_the_manifest(tmp_path: Path,
                                                                   model_server: ModelServer) -> None:
    """With the detector's own load check: a degenerate model is refused, a good one is swapped in, and the
    detector loading current.onnx reports the name and version the command gave."""
    from edge_agent.detect.detector import load_detector

    store = ModelStore(tmp_path / "models")
    store.ensure()
    first = tiny_detector(0.6, version="1")
    first_sha = hashlib.sha256(first).hexdigest()
    store.path_of(first_sha).write_bytes(first)
    store.swap(first_sha)
    detector_cfg = DetectorConfig(model=str(store.current_link))
    up = ModelUpdater(ModelUpdateConfig(ca_file=str(model_server.ca), attempts=1), store,
                      detector_sanity_check(detector_cfg))

    url, sha = model_server.publish(tiny_detector(0.0))
    refused = up.handle({"url": url, "sha256": sha, "name": "broken-int8", "version": "9"})
    assert refused["status"] == "failed" and "degenerate" in refused["reason"]
    assert store.current_sha() == first_sha

    url, sha = model_server.publish(tiny_detector(0.7, version="2"))
    result = up.handle({"url": url, "sha256": sha, "name": "potholes-tiny", "version": "2.0"})
    assert result["ok"], result
    assert result["provider"] == "CPUExecutionProvider"
    info = load_detector(detector_cfg).info
    assert (info.name, info.version, info.sha256) == ("potholes-tiny", "2.0", sha)


def test_effective_model_prefers_an_installed_update_over_bundled(tmp_path: Path) -> None:
    cfg = ModelUpdateConfig(models_dir=str(tmp_path / "models"))
    assert effective_model(DetectorConfig(model="bundled"), cfg, str(tmp_path)) == "bundled"
    store = ModelStore(tmp_path / "models")
    store.ensure()
    store.path_of("ab" * 32).write_bytes(tiny_detector())
    store.swap("ab" * 32)
    assert effective_model(DetectorConfig(model="bundled"), cfg, str(tmp_path)) == str(store.current_link)
    assert effective_model(DetectorConfig(model="/opt/pinned.onnx"), cfg, str(tmp_path)) == "/opt/pinned.onnx"


# ------------------------------------------------------------------------------ end to end, agent running
@pytest.mark.services
def test_running_agent_takes_a_model_update_over_mqtt(tmp_path: Path, model_server: ModelServer,
                                                      service_info: Any, mqtt_device: Any) -> None:
    """`edge-agent run` on the shared broker: the server publishes cmd/model-update, the agent downloads over
    HTTPS, checks, swaps, starts detecting with the new model, and answers on cmd/model-update/result."""
    import importlib.util
    import queue
    import subprocess
    import sys
    from datetime import UTC, datetime, timedelta

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from roadmon_contract import topics

    spec = importlib.util.spec_from_file_location("doctor_helpers", Path(__file__).with_name("test_doctor.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)  # type: ignore[union-attr]
    device_id, password = mqtt_device()
    (tmp_path / "pw").write_text(password)
    store = ModelStore(tmp_path / "state" / "models")  # as install.sh leaves it
    store.ensure()
    first = tiny_detector(0.6, version="1")
    store.path_of(hashlib.sha256(first).hexdigest()).write_bytes(first)
    store.swap(hashlib.sha256(first).hexdigest())
    helpers.make_video(tmp_path / "road.mp4", frames=600)  # a minute of frames at 10 fps
    start = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    (tmp_path / "drive.nmea").write_bytes(b"".join(helpers.nmea_epoch(start + timedelta(seconds=i))
                                                   for i in range(90)))
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[device]
id = "{device_id}"
state_dir = "{tmp_path / 'state'}"
[camera]
source = "{tmp_path / 'road.mp4'}"
[gnss]
source = "file"
file = "{tmp_path / 'drive.nmea'}"
[detector]
model = "{store.current_link}"
[uplink]
host = "127.0.0.1"
port = {service_info.mqtt_port}
tls = false
password_file = "{tmp_path / 'pw'}"
heartbeat_s = 1
[model_update]
ca_file = "{model_server.ca}"
""")
    url, sha = model_server.publish(tiny_detector(0.8, version="2"))
    messages: queue.Queue[tuple[str, dict]] = queue.Queue()
    server = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-server-{device_id}")
    server.username_pw_set(service_info.server_user, service_info.server_password)
    server.on_message = lambda c, u, m: messages.put((m.topic, json.loads(m.payload)))
    server.connect("127.0.0.1", service_info.mqtt_port)
    server.subscribe([(topics.cmd_result(device_id, "model-update"), 1), (topics.status(device_id), 1)])
    server.loop_start()
    agent = subprocess.Popen([str(Path(sys.executable).parent / "edge-agent"), "run", "--config", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_for(pred: Any, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                topic, payload = messages.get(timeout=0.5)
            except queue.Empty:
                assert agent.poll() is None, agent.stdout.read()  # type: ignore[union-attr]
                continue
            if pred(topic, payload):
                return payload
        raise AssertionError("timed out")

    try:
        wait_for(lambda t, p: t.endswith("/status") and p.get("state") == "online", 60)
        server.publish(topics.cmd(device_id, "model-update"),
                       json.dumps({"url": url, "sha256": sha, "name": "potholes-tiny", "version": "2"}), qos=1)
        result = wait_for(lambda t, p: t.endswith("/result"), 60)
        assert result["ok"] is True and result["status"] == "installed", result
        assert result["sha256"] == sha
        status = wait_for(lambda t, p: t.endswith("/status") and (p.get("model") or {}).get("sha256") == sha, 30)
        assert status["model"]["version"] == "2", "the running agent now detects with the new model"
        server.publish(topics.cmd(device_id, "model-update"),
                       json.dumps({"url": url, "sha256": "0" * 64, "name": "x", "version": "3"}), qos=1)
        bad = wait_for(lambda t, p: t.endswith("/result"), 60)
        assert bad["ok"] is False and "sha256 mismatch" in bad["reason"]
        assert store.current_sha() == sha
    finally:
        agent.terminate()
        agent.wait(30)
        server.loop_stop()
        server.disconnect()


def test_going_back_to_a_kept_model_needs_no_download(store: ModelStore, model_server: ModelServer) -> None:
    first = store.current_sha()
    url, sha = model_server.publish(tiny_onnx(14.0))
    up = updater(store, model_server)
    assert up.handle({"url": url, "sha256": sha})["ok"]
    asked = len(model_server.requests)
    back = up.handle({"url": f"{model_server.base}/api/v1/models/{first}.onnx", "sha256": first, "version": "1"})
    assert back["ok"] and back["status"] == "installed", back
    assert len(model_server.requests) == asked, "the kept file was used, nothing downloaded"
    assert store.current_sha() == first and store.previous_sha() == sha


def test_partial_download_left_by_a_crash_is_resumed(store: ModelStore, model_server: ModelServer) -> None:
    data = tiny_onnx(15.0)
    url, sha = model_server.publish(data)
    store.ensure()
    (store.incoming / f"{sha}.part").write_bytes(data[:50])       # the agent died here last time
    (store.incoming / f"{'e' * 64}.part").write_bytes(b"stale")  # a different model, abandoned
    result = updater(store, model_server).handle({"url": url, "sha256": sha})
    assert result["ok"], result
    assert model_server.requests == ["bytes=50-"]
    assert list(store.incoming.iterdir()) == []


@pytest.mark.services
def test_signed_push_from_the_fleet_server_is_accepted(tmp_path: Path, model_server: ModelServer,
                                                       service_info: Any, mqtt_device: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`fleet-server model push --signature-file` -> broker -> the device's cmd topic -> ModelUpdater with the
    release public key: the wire contract for signed models, through the real server code and broker."""
    import queue

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from fleet_server import commands
    from fleet_server.config import ServerConfig
    from roadmon_contract import topics

    device_id, password = mqtt_device()
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (tmp_path / "release.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    model = tmp_path / "new.onnx"
    model.write_bytes(tiny_onnx(21.0))
    url, sha = model_server.publish(model.read_bytes())  # what the API serves from models.dir
    monkeypatch.setenv("ROADMON_MQTT_PASSWORD", service_info.server_password)
    server_cfg = ServerConfig.model_validate({
        "mqtt": {"host": "127.0.0.1", "port": service_info.mqtt_port, "username": service_info.server_user},
        "models": {"dir": str(tmp_path / "staged"), "url_base": model_server.base}})

    received: queue.Queue[dict] = queue.Queue()
    subscribed = threading.Event()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
    device.username_pw_set(device_id, password)
    device.on_message = lambda c, u, m: received.put(json.loads(m.payload))
    device.on_subscribe = lambda *a: subscribed.set()
    device.connect("127.0.0.1", service_info.mqtt_port)
    device.subscribe(topics.cmd(device_id, "model-update"), qos=1)
    device.loop_start()
    try:
        assert subscribed.wait(5)
        sent = commands.push_model(server_cfg, device_id, model, name="potholes", version="3",
                                   signature=sign_file(pem, model))
        payload = received.get(timeout=10)
    finally:
        device.loop_stop()
        device.disconnect()
    assert payload == sent and payload["url"] == url and payload["sha256"] == sha
    store = ModelStore(tmp_path / "models")
    up = ModelUpdater(ModelUpdateConfig(ca_file=str(model_server.ca), public_key=str(tmp_path / "release.pub.pem")),
                      store, ort_sanity_check)
    result = up.handle(payload)
    assert result["ok"], result
    assert store.current_sha() == sha


def test_unusable_public_key_refuses_updates_but_does_not_crash(store: ModelStore, model_server: ModelServer,
                                                                tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    for key in (str(tmp_path / "missing.pem"), str(tmp_path / "bad.pem")):
        up = updater(store, model_server, public_key=key)  # constructing must not raise: the agent starts
        url, sha = model_server.publish(tiny_onnx(22.0))
        result = up.handle({"url": url, "sha256": sha})
        assert result["status"] == "refused" and "public_key is unusable" in result["reason"]
        assert model_server.requests == [], "nothing is downloaded without a usable key"
