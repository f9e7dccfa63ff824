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
from tests.server_fixtures import make_cfg

__all__ = ["make_cfg"]

# ---------------------------------------------------------------------------------------- fixtures


def tiny_onnx(scale: float, pad: int = 0) -> bytes:
    """A real, loadable ONNX model (images -> images * scale); different scales give different files. PAD bytes
    of doc string make it bigger than one download chunk."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 32, 32])
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["images", "k"], ["out"])], "tiny", [x], [y], [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model.doc_string = "x" * pad
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
    """HTTPS file server like the fleet server's GET /api/v1/models/{sha256}.onnx, with Range support, a
    switch to cut connections part-way (`cut_after` bytes, for the first `cuts` responses) and one to stall
    them (after `stall_at` bytes until `release` is set)."""

    base: str
    ca: Path
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int = 0
    cuts: int = 0
    requests: list[str | None] = field(default_factory=list)
    stall_at: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location of a 302

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
            if (location := state.redirects.get(self.path.split("?")[0])) is not None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = state.files.get(self.path.split("?")[0])
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
            if (stall := state.stall_at) is not None:
                self.wfile.write(body[:stall])
                self.wfile.flush()
                state.release.wait(60)
                body = body[stall:]
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


def updater(store: ModelStore, server: ModelServer, activate: Any = None, publish: Any = None,
            **cfg: Any) -> ModelUpdater:
    config = ModelUpdateConfig(ca_file=str(server.ca), attempts=cfg.pop("attempts", 3), **cfg)
    return ModelUpdater(config, store, ort_sanity_check, activate=activate, health=HealthBoard(), publish=publish)


class Published:
    """Stands in for the uplink: collects the results an updater publishes, and tells it when the broker has
    one (which is when its journal entry goes)."""

    def __init__(self) -> None:
        self.results: list[dict] = []
        self.updater: ModelUpdater | None = None

    def __call__(self, result: dict) -> None:
        self.results.append(result)
        assert self.updater is not None
        self.updater.published(result)

    def wait(self, status: str, timeout_s: float = 30) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [r for r in self.results if r["status"] == status]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {status!r} result in {self.results}")


def publishing(store: ModelStore, server: ModelServer, **cfg: Any) -> tuple[ModelUpdater, Published]:
    out = Published()
    out.updater = updater(store, server, publish=out, **cfg)
    return out.updater, out


def assert_untouched(store: ModelStore, sha_before: str) -> None:
    assert store.current_sha() == sha_before
    assert store.current_link.resolve().read_bytes() == tiny_onnx(1.0)
    assert list(store.incoming.iterdir()) == [], "partial downloads must not be left behind"


def add_device(server_cfg: Any, device_id: str) -> None:
    """The device's row, as `fleet-server device add` makes it (commands go only to known devices)."""
    import psycopg

    with psycopg.connect(server_cfg.database.resolve_dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id) VALUES (%s)", (device_id,))


class DeviceCommands:
    """A device's MQTT login subscribed to its own cmd topics, collecting what the server sends it."""

    def __init__(self, service_info: Any, device_id: str, password: str) -> None:
        import queue

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: queue.Queue[dict] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.username_pw_set(device_id, password)
        self.client.on_message = lambda c, u, m: self.received.put(json.loads(m.payload))
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", service_info.mqtt_port)
        self.client.subscribe(f"roadmon/v1/{device_id}/cmd/+", qos=1)
        self.client.loop_start()

    def __enter__(self) -> DeviceCommands:
        assert self.subscribed.wait(5), "no SUBACK"
        return self

    def __exit__(self, *_: object) -> None:
        self.client.loop_stop()
        self.client.disconnect()


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
    asked = len(model_server.requests)
    unsigned = up.handle({"url": url, "sha256": sha})
    assert unsigned["status"] == "refused" and "signature is required" in unsigned["reason"]
    assert len(model_server.requests) == asked, "refused before downloading"
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


def test_a_redirect_must_keep_to_https_and_the_url_prefix(store: ModelStore, model_server: ModelServer) -> None:
    """urllib followed any redirect: a 302 under url_prefix took the download to plain http or another host."""
    url, sha = model_server.publish(tiny_onnx(9.0))
    prefix = f"{model_server.base}/api/v1/models/"
    model_server.redirects["/api/v1/models/to-http.onnx"] = url.replace("https://", "http://")
    model_server.redirects["/api/v1/models/to-elsewhere.onnx"] = f"{model_server.base}/elsewhere/{sha}.onnx"
    model_server.redirects["/api/v1/models/inside.onnx"] = url
    before = store.current_sha()
    for name, what in (("to-http", "https"), ("to-elsewhere", "url_prefix")):
        result = updater(store, model_server, url_prefix=prefix).handle({"url": f"{prefix}{name}.onnx", "sha256": sha})
        assert result["status"] == "refused" and "redirected" in result["reason"] and what in result["reason"]
        assert store.current_sha() == before != sha
    result = updater(store, model_server, url_prefix=prefix).handle({"url": f"{prefix}inside.onnx", "sha256": sha})
    assert result["status"] == "installed" and store.current_sha() == sha


def test_the_url_prefix_is_a_folder_on_one_host_not_a_text_prefix(tmp_path: Path) -> None:
    """As a text prefix, '../' steps (plain or encoded), a longer host name and a login passed it."""
    from edge_agent.detect.model_update import url_refusal
    from roadmon_contract.config_base import ConfigError, validate

    cfg = ModelUpdateConfig(url_prefix="https://fleet.example.org/api/v1/models/")
    good = "https://fleet.example.org/api/v1/models/" + "a" * 64 + ".onnx?sig=x"
    assert url_refusal(good, cfg) is None
    assert url_refusal(good.replace("fleet.example.org", "FLEET.example.org"), cfg) is None
    for bad in ("https://fleet.example.org/api/v1/models/../../private/m.onnx",
                "https://fleet.example.org/api/v1/models/%2e%2e/%2e%2e/private/m.onnx",
                "https://fleet.example.org/api/v1/models/..%2f..%2fprivate/m.onnx",
                "https://fleet.example.org/api/v1/models/\\..\\..\\m.onnx",
                "https://fleet.example.org@evil.net/api/v1/models/m.onnx",
                "https://fleet.example.org.evil.net/api/v1/models/m.onnx",
                "https://fleet.example.org:8443/api/v1/models/m.onnx",
                "https://fleet.example.org:x/api/v1/models/m.onnx"):
        assert url_refusal(bad, cfg) is not None, bad
    for prefix in ("https://fleet.example.org", "https://fleet.example.org/api/v1/models",
                   "https://u@fleet.example.org/m/", "ftp://fleet.example.org/m/"):
        with pytest.raises(ConfigError, match="url_prefix"):
            validate(ModelUpdateConfig, {"url_prefix": prefix})


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
    HTTPS, checks, swaps, starts detecting with the new model, and answers on cmd/model-update/result.
    It starts although its current model is damaged (on previous.onnx, reported), answers `expired` to a
    stale command, and takes cmd/config-reload: a bad file is refused naming the key, a good one ends the
    process with the restart code."""
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
    first = _install(store, tiny_detector(0.6, version="1"), "1")
    damaged = _install(store, tiny_detector(0.65, version="1b"), "1b")
    store.path_of(damaged).write_bytes(b"half a model")
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
    server.subscribe([(topics.cmd_result(device_id, "+"), 1), (topics.status(device_id), 1)])
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

    def result_of(status: str) -> dict:
        return wait_for(lambda t, p: t.endswith("/result") and p.get("status") == status, 60)

    try:
        online = wait_for(lambda t, p: t.endswith("/status") and p.get("state") == "online", 60)
        assert online["model"]["sha256"] == first and "sha256 mismatch" in online["model"]["fallback"]
        assert "previous" in result_of("fallback")["reason"]
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
        stale = {"url": url, "sha256": first, "command_id": "stale", "expires_at": "2026-01-01T00:00:00Z"}
        server.publish(topics.cmd(device_id, "model-update"), json.dumps(stale), qos=1)
        assert result_of("expired")["command_id"] == "stale" and store.current_sha() == sha

        good_config = config.read_text()
        config.write_text(good_config + "\n[tracker]\nmax_rang_m = 30\n")
        server.publish(topics.cmd(device_id, "config-reload"), json.dumps({"command_id": "bad"}), qos=1)
        invalid = result_of("invalid")
        assert invalid["ok"] is False and invalid["command_id"] == "bad"
        assert any(p.startswith("tracker.max_rang_m") for p in invalid["problems"]), invalid
        time.sleep(1)
        assert agent.poll() is None, "a bad config file must not stop the agent"
        config.write_text(good_config.replace("heartbeat_s = 1", "heartbeat_s = 2"))
        server.publish(topics.cmd(device_id, "config-reload"), json.dumps({"command_id": "good"}), qos=1)
        restarting = result_of("restarting")
        assert restarting["ok"] and restarting["changed"] == ["uplink"] and restarting["command_id"] == "good"
        assert agent.wait(30) == 4, "exits for systemd (Restart=always) to start it on the new config"
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
                                                       service_info: Any, mqtt_device: Any, make_cfg: Any) -> None:
    """`fleet-server model push --signature-file` -> broker -> the device's cmd topic -> ModelUpdater with the
    release public key: the wire contract for signed models, through the real server code and broker."""
    from fleet_server import commands

    device_id, password = mqtt_device()
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (tmp_path / "release.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    model = tmp_path / "new.onnx"
    model.write_bytes(tiny_onnx(21.0))
    url, sha = model_server.publish(model.read_bytes())  # what the API serves from models.dir
    server_cfg = make_cfg(devices=[device_id], models={"url_base": model_server.base})
    add_device(server_cfg, device_id)

    with DeviceCommands(service_info, device_id, password) as device:
        sent = commands.push_model(server_cfg, device_id, model, name="potholes", version="3",
                                   signature=sign_file(pem, model))
        payload = device.received.get(timeout=10)
    assert payload == sent and payload["url"].startswith(url + "?") and payload["sha256"] == sha
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


# ---------------------------------------------------------------- the server's own push, end to end over HTTP
@pytest.mark.services
def test_push_downloads_from_the_servers_own_api_with_its_signed_link(tmp_path: Path, service_info: Any,
                                                                       mqtt_device: Any, make_cfg: Any) -> None:
    """`model push` with the server's own model route: the agent has no HTTP token, the command's signed link
    is its right to download. Served over plain HTTP on loopback, which the agent takes only with allow_http
    (and says which setting to change when it lacks it)."""
    from fleet_server import commands
    from tests.server_fixtures import serve_api

    device_id, password = mqtt_device()
    server_cfg = make_cfg(devices=[device_id])
    add_device(server_cfg, device_id)
    model = tmp_path / "potholes.onnx"
    model.write_bytes(tiny_onnx(31.0))
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    store = ModelStore(tmp_path / "agent-models")
    with serve_api(server_cfg) as base, DeviceCommands(service_info, device_id, password) as device:
        sent = commands.push_model(server_cfg, device_id, model, url_base=base, name="potholes", version="4")
        payload = device.received.get(timeout=10)
        assert payload == sent and payload["url"].startswith(f"{base}/api/v1/models/{sha}.onnx?")
        assert payload["expires_at"] > payload["issued_at"] and payload["command_id"]

        strict = ModelUpdater(ModelUpdateConfig(), store, ort_sanity_check).handle(payload)
        assert strict["status"] == "refused" and "model_update.allow_http" in strict["reason"], strict

        lab = ModelUpdater(ModelUpdateConfig(allow_http=True, attempts=1), store, ort_sanity_check)
        result = lab.handle(payload)
        assert result["ok"] and result["status"] == "installed", result
        assert result["command_id"] == payload["command_id"]
        assert store.current_link.resolve().read_bytes() == model.read_bytes()
        assert "sig=" not in json.dumps(result) + store.meta_path(sha).read_text(), "the capability stays private"


@pytest.mark.services
def test_the_broker_drops_a_command_that_expires_while_the_vehicle_is_off(service_info: Any, mqtt_device: Any,
                                                                           make_cfg: Any) -> None:
    """A van off overnight: the broker keeps its commands. Its Pi, without a clock chip, starts days behind, so
    by its clock an expired command looks fresh and was carried out. The expiry also goes out as the MQTT 5
    message expiry, which the broker enforces on its own clock: the expired command is never delivered."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from fleet_server import commands

    device_id, password = mqtt_device()
    server_cfg = make_cfg(devices=[device_id])
    add_device(server_cfg, device_id)
    got: list[dict] = []
    subscribed = threading.Event()

    def session() -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(device_id, password)
        client.on_message = lambda c, u, m: got.append(json.loads(m.payload))
        client.on_subscribe = lambda *a: subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        client.connect("127.0.0.1", service_info.mqtt_port, clean_start=False, properties=props)
        client.loop_start()
        return client

    client = session()
    client.subscribe(f"roadmon/v1/{device_id}/cmd/+", qos=1)
    assert subscribed.wait(5), "no SUBACK"
    client.disconnect()
    client.loop_stop()

    # 1-2 s ahead once cut to the second (1 s ahead was already past when the machine was busy)
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat(timespec="seconds").replace("+00:00", "Z")
    short = commands.send(server_cfg, device_id, "config-reload", {"expires_at": soon})
    kept = commands.send(server_cfg, device_id, "config-reload", {})
    time.sleep(3.5)
    client = session()  # the vehicle back on: its session's queue is delivered
    deadline = time.monotonic() + 5
    while len(got) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    client.disconnect()
    client.loop_stop()
    assert [g["command_id"] for g in got] == [kept["command_id"]], (short["command_id"], got)

    with pytest.raises(commands.CommandError, match="has passed"):
        commands.send(server_cfg, device_id, "config-reload", {"expires_at": "2026-01-01T00:00:00Z"})


def test_the_journal_orders_commands_by_the_servers_time_not_the_boxs(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pushes across a power cut that set the box's clock back a day (no clock chip): by the box's clock the
    newer one looked older, and a restart resumed the older push as the newest."""
    from edge_agent.detect import model_update

    journal = model_update.Journal(tmp_path / ".commands")
    monkeypatch.setattr(model_update, "utc_now_iso", lambda: "2026-12-06T10:00:00Z")
    journal.write("older", {"command_id": "older", "issued_at": "2026-12-06T09:59:00Z"}, "queued")
    monkeypatch.setattr(model_update, "utc_now_iso", lambda: "2026-12-05T10:05:00Z")  # after the power cut
    journal.write("newer", {"command_id": "newer", "issued_at": "2026-12-06T10:04:00Z"}, "queued")
    assert [key for key, _ in journal.entries()] == ["older", "newer"]


# --------------------------------------------------------------------------- the newest push wins, expiry
def test_a_push_during_an_update_is_queued_and_the_newest_wins(store: ModelStore,
                                                                model_server: ModelServer) -> None:
    first_url, first = model_server.publish(tiny_onnx(40.0))
    up, out = publishing(store, model_server)
    model_server.stall_at = 10  # the first download hangs until released
    done: list[dict] = []
    worker = threading.Thread(target=lambda: done.append(up.handle({"url": first_url, "sha256": first})))
    worker.start()
    deadline = time.monotonic() + 10
    while not model_server.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    cmds = []
    for scale in (41.0, 42.0):
        url, sha = model_server.publish(tiny_onnx(scale))
        cmds.append({"url": url, "sha256": sha, "command_id": f"c{int(scale)}"})
    queued = [up.handle(cmd) for cmd in cmds]
    assert [q["status"] for q in queued] == ["queued", "queued"] and all(q["ok"] for q in queued)
    superseded = out.wait("superseded", 5)
    assert superseded["command_id"] == "c41" and cmds[1]["sha256"] in superseded["reason"]
    model_server.stall_at = None
    model_server.release.set()
    worker.join(30)
    assert done[0]["status"] == "installed" and done[0]["sha256"] == first
    up.published(done[0])  # as the uplink does once the broker has it
    newest = out.wait("installed")
    assert newest["command_id"] == "c42" and store.current_sha() == cmds[1]["sha256"] == newest["sha256"]
    assert store.previous_sha() == first
    assert list(up.journal.entries()) == [], "every command answered"


def test_an_expired_command_is_answered_expired_and_not_applied(store: ModelStore,
                                                                model_server: ModelServer) -> None:
    old = store.current_sha()
    url, sha = model_server.publish(tiny_onnx(43.0))
    result = updater(store, model_server).handle({"url": url, "sha256": sha, "command_id": "week-old",
                                                  "issued_at": "2026-01-01T00:00:00Z",
                                                  "expires_at": "2026-01-02T00:00:00Z"})
    assert result["ok"] is False and result["status"] == "expired" and "2026-01-02" in result["reason"]
    assert result["command_id"] == "week-old" and model_server.requests == []
    assert_untouched(store, old)


# ------------------------------------------------------------------------- crash in the middle of an update
def test_an_update_killed_mid_download_is_resumed_at_the_next_start(store: ModelStore,
                                                                    model_server: ModelServer) -> None:
    """kill -9 while the model downloads: the command was acked to the broker, so only the journal remembers
    it. The next start resumes the download where the .part file ends and publishes the result."""
    import subprocess
    import sys

    data = tiny_onnx(44.0, pad=1_500_000)  # more than one 1 MB chunk reaches the disk before the stall
    url, sha = model_server.publish(data)
    model_server.stall_at = 1_200_000
    payload = {"url": url, "sha256": sha, "command_id": "killed"}
    script = ("import json, sys\n"
              "from edge_agent.config.model_update import ModelUpdateConfig\n"
              "from edge_agent.detect.model_update import ModelStore, ModelUpdater\n"
              "ModelUpdater(ModelUpdateConfig(ca_file=sys.argv[2]), ModelStore(sys.argv[1]), lambda p: {})"
              ".handle(json.loads(sys.argv[3]))\n")
    agent = subprocess.Popen([sys.executable, "-c", script, str(store.root), str(model_server.ca),
                              json.dumps(payload)])
    partial = store.incoming / f"{sha}.part"
    deadline = time.monotonic() + 30
    while not (partial.exists() and partial.stat().st_size >= 1 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    agent.kill()
    agent.wait(10)
    model_server.stall_at = None
    model_server.release.set()
    got = partial.stat().st_size
    assert got >= 1 << 20, "the download had not reached the disk"

    up, out = publishing(store, model_server)
    up.recover()
    result = out.wait("installed")
    assert result["command_id"] == "killed" and store.current_sha() == sha
    assert model_server.requests[-1] == f"bytes={got}-", "resumed where the killed download stopped"
    assert list(store.incoming.iterdir()) == [] and up.journal.entries() == []


def test_unfinished_updates_are_answered_at_start(store: ModelStore, model_server: ModelServer) -> None:
    """What the journal holds after a crash: a swap that was done is `installed`; one that expired meanwhile,
    or was cut off by restarts too often, is answered so, and its partial download goes."""
    installed = store.current_sha()
    up, out = publishing(store, model_server)
    up.journal.write("swapped", {"sha256": installed, "url": "https://x/m.onnx", "command_id": "swapped"}, "running")
    up.journal.write("late", {"sha256": "b" * 64, "url": "https://x/m.onnx", "command_id": "late",
                              "expires_at": "2026-01-01T00:00:00Z"}, "queued")
    for _ in range(3):
        up.journal.write("crashy", {"sha256": "c" * 64, "url": "https://x/m.onnx", "command_id": "crashy"},
                         "running")
    (store.incoming / f"{'c' * 64}.part").write_bytes(b"partial")
    up.recover()
    by_id = {r["command_id"]: r for r in out.results}
    assert by_id["swapped"]["status"] == "installed" and by_id["swapped"]["ok"]
    assert by_id["late"]["status"] == "expired"
    assert by_id["crashy"]["status"] == "interrupted" and "3 agent restarts" in by_id["crashy"]["reason"]
    assert list(store.incoming.iterdir()) == [] and up.journal.entries() == []
    assert model_server.requests == []


# ---------------------------------------------------------------------------- a damaged model at start
def _agent_config(tmp_path: Path, store: ModelStore) -> Any:
    from edge_agent.config import AgentConfig

    return AgentConfig.model_validate({"device": {"id": "veh-fallback", "state_dir": str(tmp_path / "state")},
                                       "detector": {"model": str(store.current_link)},
                                       "model_update": {"models_dir": str(store.root)},
                                       "uplink": {"enabled": False}})


def _install(store: ModelStore, data: bytes, version: str) -> str:
    sha = hashlib.sha256(data).hexdigest()
    store.path_of(sha).write_bytes(data)
    store.write_meta(sha, {"sha256": sha, "name": "potholes-tiny", "version": version})
    store.swap(sha)
    return sha


def test_a_damaged_current_model_falls_back_to_previous_at_start(tmp_path: Path) -> None:
    """current.onnx no longer matches its manifest (a bad sector, a half-written copy): the agent starts on
    previous.onnx, says so loudly and in its heartbeat, and keeps the links for a fixed push to repair."""
    from edge_agent.detect.detector import ModelError
    from edge_agent.runtime.assemble import build_agent

    store = ModelStore(tmp_path / "models")
    store.ensure()
    good = _install(store, tiny_detector(0.6, version="1"), "1")
    damaged = _install(store, tiny_detector(0.7, version="2"), "2")
    store.path_of(damaged).write_bytes(tiny_detector(0.7, version="2")[:-40])
    cfg = _agent_config(tmp_path, store)
    with build_agent(cfg) as agent:
        assert agent.pipeline.model.sha256 == good and agent.pipeline.model.version == "1"
        fallback = agent.health.snapshot()["model"]["fallback"]
        assert "sha256 mismatch" in fallback and "previous" in fallback, fallback
        assert agent.model_fallback == fallback
    assert store.current_sha() == damaged and store.previous_sha() == good

    # A model the operator pinned has nothing else to fall back on: the start fails with its own error.
    pinned = cfg.model_copy(update={"detector": cfg.detector.model_copy(update={"model": str(store.path_of(damaged))})})
    with pytest.raises(ModelError, match="sha256 mismatch"):
        build_agent(pinned)


def test_a_pushed_models_manifest_and_journal_are_durable_before_their_names(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A power-cut review found the manifest beside a pushed model renamed in without an fsync: under a new name
    ext4 does not flush it first, it came back empty, and the agent fell back to the old model and told the
    server the push failed. Each file is now fsynced before its rename and the folder after it."""
    import os

    from edge_agent.detect.model_update import Journal, ModelStore

    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append(("replace", f"{src} -> {dst}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store = ModelStore(tmp_path / "models")
    store.ensure()
    store.write_meta("ab" * 32, {"name": "pushed", "version": "2"})
    Journal(store.root / ".commands").write("model-update", {"sha256": "ab" * 32}, "running")
    for written in (store.meta_path("ab" * 32), store.root / ".commands"):
        [at] = [i for i, (kind, what) in enumerate(calls)
                if kind == "replace" and str(written) in what.split(" -> ")[1]]
        source = calls[at][1].split(" -> ")[0]
        assert ("fsync", source) in calls[:at], calls  # the content first
        assert ("fsync", str(written.parent if written.suffix else written)) in calls[at:], calls  # then its name
    assert json.loads(store.meta_path("ab" * 32).read_text())["version"] == "2"


def test_a_command_is_journaled_before_the_broker_hears_it_arrived(store: ModelStore, model_server: ModelServer,
                                                                    tmp_path: Path) -> None:
    """paho PUBACKs a command when the message callback returns; the journal was written later, in the worker.
    A power cut between the two left a command the broker had deleted and the box had forgotten: never
    answered. Now the uplink's callback journals it first, so the next start carries it out."""
    from edge_agent.config.uplink import UplinkConfig
    from edge_agent.link.outbox import Outbox
    from edge_agent.link.uplink import Uplink

    url, sha = model_server.publish(tiny_onnx(45.0))
    first = updater(store, model_server)
    with Outbox(tmp_path / "outbox.db") as ob:
        uplink = Uplink(UplinkConfig(), "veh-t", ob)  # not started: no worker runs the handler (the cut)
        first.register(uplink)
        uplink.desk.receive("model-update", json.dumps({"url": url, "sha256": sha, "command_id": "cut"}).encode())
    assert [entry["state"] for _key, entry in first.journal.entries()] == ["received"]
    up, out = publishing(store, model_server)  # the next start
    up.recover()
    assert out.wait("installed")["command_id"] == "cut" and store.current_sha() == sha
    assert up.journal.entries() == []
