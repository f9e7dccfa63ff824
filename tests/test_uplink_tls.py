"""The uplink over TLS (the production default) against a private Mosquitto with TLS listeners: CA + password,
client certificate login, and an untrusted broker certificate reported clearly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edge_agent.config.outbox import OutboxConfig
from edge_agent.health import HealthBoard
from edge_agent.link.broker_probe import probe_broker
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from tests.ack_server import AckServer
from tests.conftest import on_a_free_port
from tests.test_uplink import fill, login, uplink_cfg, wait_for

pytestmark = pytest.mark.services
DEVICE = "veh-tls"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> Path:
    """A throw-away CA, a server certificate for localhost/127.0.0.1 and a client certificate for DEVICE."""
    folder.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca",
             cwd=folder)
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn, ext in (("server", "localhost", ["-extfile", "san.cnf"]), ("client", DEVICE, [])):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", *ext, cwd=folder)
    return folder


@pytest.fixture
def tls_broker(private_broker, tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    tls = f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"

    def broker_on(pw_port: int, cert_port: int):
        conf = (f"listener {pw_port} 127.0.0.1\n{tls}"
                f"listener {cert_port} 127.0.0.1\n{tls}require_certificate true\nuse_identity_as_username true\n")
        mq = private_broker(extra_conf=conf, start=False)
        mq.add_device(DEVICE, "pw-tls")
        mq.up()
        return mq, pw_port, cert_port

    mq, pw_port, cert_port = on_a_free_port(broker_on, ports=2)
    # 30 s: a TLS broker on a loaded 2-core machine once took over 10 s to take the first subscription
    server = AckServer("127.0.0.1", mq.port, "roadmon-server", mq.server_password, client_id="ack-tls")
    server.start(timeout_s=30)
    yield {"pki": pki, "pw_port": pw_port, "cert_port": cert_port}
    server.stop()


def drain(cfg, tmp_path: Path, name: str) -> Outbox:
    outbox = Outbox(tmp_path / f"{name}.db", OutboxConfig(synchronous="NORMAL"))
    fill(outbox, 30)
    uplink = Uplink(cfg, DEVICE, outbox, HealthBoard())
    uplink.start()
    try:
        wait_for(lambda: outbox.stats()["queue_depth"] == 0, 20, f"{name}: all confirmed over TLS")
    finally:
        uplink.stop()
    return outbox


def test_tls_with_ca_and_password(tls_broker, tmp_path: Path) -> None:
    cfg = uplink_cfg(tls_broker["pw_port"], login(tmp_path, "pw-tls"), tls=True, host="localhost",
                     ca_file=str(tls_broker["pki"] / "ca.pem"))
    drain(cfg, tmp_path, "password")
    steps = probe_broker(cfg, DEVICE)
    assert [s.ok for s in steps] == [True] * 5
    assert "TLSv1." in steps[2].detail and "localhost" in steps[2].detail


def test_tls_with_client_certificate(tls_broker, tmp_path: Path) -> None:
    pki = tls_broker["pki"]
    cfg = uplink_cfg(tls_broker["cert_port"], tmp_path / "unused", tls=True, host="localhost",
                     ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"), key_file=str(pki / "client.key"))
    cfg = cfg.model_copy(update={"password_file": None})  # the certificate alone is the login
    drain(cfg, tmp_path, "certificate")


def test_untrusted_broker_certificate_is_reported(tls_broker, tmp_path: Path) -> None:
    cfg = uplink_cfg(tls_broker["pw_port"], login(tmp_path, "pw-tls"), tls=True, host="localhost")  # system CAs
    outbox = Outbox(tmp_path / "o.db", OutboxConfig(synchronous="NORMAL"))
    fill(outbox, 5)
    health = HealthBoard()
    uplink = Uplink(cfg, DEVICE, outbox, health)
    uplink.start()
    try:
        wait_for(lambda: "certificate" in (uplink.last_error or ""), 10, "a certificate error")
        assert health.snapshot()["uplink"] in ("offline", "connecting")
        assert outbox.stats()["events"]["pending"] == 5
    finally:
        uplink.stop()
    steps = probe_broker(cfg, DEVICE)
    assert steps[2].ok is False and "not trusted" in steps[2].detail and "ca_file" in steps[2].hint
