"""Checks the way to the broker one step at a time (DNS, TCP, TLS handshake, MQTT login, a publish to the
device's own topic) and says where it breaks. Used by `edge-agent doctor`. Its publish goes to topics.probe,
which the server's ingest acknowledges without storing: a doctor run is no command result on the server.

It never costs the agent its session. The fleet's broker binds client ids to logins on the vehicles' listener
(`use_username_as_clientid`, deploy/mosquitto.conf: one vehicle's login took another's session by its id), so
the probe's own id, `<device>-probe`, may become the agent's there. Hence: while the agent runs and is logged
in, the probe does not log in (the agent's status proves it); otherwise it resumes rather than clears a session
(clean start off, the agent's expiry) and acknowledges nothing delivered to it, which the broker then keeps for
the agent."""

from __future__ import annotations

import json
import socket
import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config.uplink import UplinkConfig
from edge_agent.link.mqtt_tls import CredentialError, apply_login, tls_context
from roadmon_contract import topics
from roadmon_contract.times import utc_now_iso

STEPS = ("dns", "tcp", "tls", "auth", "publish")


@dataclass(frozen=True)
class ProbeStep:
    name: str            # one of STEPS
    ok: bool | None      # None: skipped (an earlier step failed, or TLS is off)
    detail: str
    seconds: float = 0.0
    hint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Failed(Exception):
    def __init__(self, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.hint = hint


def probe_broker(cfg: UplinkConfig, device_id: str, timeout_s: float = 5.0,
                 agent_logged_in: str | None = None, agent_running: str | None = None) -> list[ProbeStep]:
    """Run every step in order; after the first failure the rest are reported as skipped. AGENT_LOGGED_IN (what
    says so: the running agent's status) stands for the login and publish steps; AGENT_RUNNING (why they cannot
    be tried: an agent runs whose state is unknown) skips them."""
    host, port = cfg.host, cfg.port
    checks = [
        ("dns", lambda: _dns(host, port)),
        ("tcp", lambda: _tcp(host, port, timeout_s)),
        ("tls", lambda: _tls(cfg, timeout_s)),
        ("auth", lambda: (True, agent_logged_in) if agent_logged_in
         else _mqtt(cfg, device_id, timeout_s, publish=False)),
        ("publish", lambda: (True, "the running agent sends under this id") if agent_logged_in
         else _mqtt(cfg, device_id, timeout_s, publish=True)),
    ]
    out: list[ProbeStep] = []
    failed = False
    for name, check in checks:
        if failed:
            out.append(ProbeStep(name, None, "skipped: an earlier step failed"))
            continue
        if agent_running and name in ("auth", "publish"):
            out.append(ProbeStep(name, None, f"skipped: {agent_running}"))
            continue
        t0 = time.monotonic()
        try:
            ok, detail = check()
            out.append(ProbeStep(name, ok, detail, round(time.monotonic() - t0, 3)))
        except _Failed as exc:
            failed = True
            out.append(ProbeStep(name, False, str(exc), round(time.monotonic() - t0, 3), exc.hint))
    return out


def _dns(host: str, port: int) -> tuple[bool, str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _Failed(f"cannot resolve {host}: {exc.strerror}",
                      "check uplink.host, /etc/resolv.conf and that the modem is online") from None
    addresses = sorted({str(i[4][0]) for i in infos})
    return True, f"{host} -> {', '.join(addresses)}"


def _tcp(host: str, port: int, timeout_s: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise _Failed(f"cannot connect to {host}:{port}: {exc.strerror or exc}",
                      "check uplink.port, that the broker runs and that no firewall blocks the port") from None
    return True, f"{host}:{port} accepts connections"


def _tls(cfg: UplinkConfig, timeout_s: float) -> tuple[bool | None, str]:
    if not cfg.tls:
        return None, "TLS is off (uplink.tls = false)"
    try:
        ctx = tls_context(cfg)
        with socket.create_connection((cfg.host, cfg.port), timeout=timeout_s) as raw, \
                ctx.wrap_socket(raw, server_hostname=cfg.host) as tls:
            cert = tls.getpeercert() or {}
            version = tls.version()
    except CredentialError as exc:
        raise _Failed(str(exc), "fix uplink.ca_file / cert_file / key_file") from None
    except ssl.SSLCertVerificationError as exc:
        raise _Failed(f"the broker's certificate is not trusted: {exc.verify_message}",
                      "set uplink.ca_file to the CA that signed it; check the box's clock (doctor clock)") from None
    except (OSError, ssl.SSLError) as exc:
        raise _Failed(f"TLS handshake failed: {exc}", "is this port TLS? 8883 is, 1883 is not") from None
    subject = _common_name(cert.get("subject", ()))
    return True, f"{version}, certificate for {subject}, valid until {cert.get('notAfter', '?')}"


def _common_name(subject: object) -> str:
    """The commonName in a peer certificate's subject: a tuple of RDNs, each a tuple of (name, value) pairs."""
    if not isinstance(subject, tuple):  # getpeercert types its values loosely; a subject is never a bare string
        return "?"
    return str(dict(rdn[0] for rdn in subject).get("commonName", "?"))


def _mqtt(cfg: UplinkConfig, device_id: str, timeout_s: float, publish: bool) -> tuple[bool, str]:
    result: dict[str, Any] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device_id}-probe", protocol=mqtt.MQTTv5)
    client.manual_ack_set(True)  # a resumed agent session's commands and acks stay the broker's to redeliver
    client.on_connect = lambda c, u, f, rc, p: result.__setitem__("connack", rc)
    client.on_publish = lambda c, u, mid, rc, p: result.__setitem__("puback", rc)
    try:
        apply_login(client, cfg, device_id)
    except CredentialError as exc:
        raise _Failed(str(exc), "put the password in the file named by uplink.password_file") from None
    try:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s  # a resumed agent session keeps the agent's expiry
        client.connect(cfg.host, cfg.port, keepalive=10, clean_start=False, properties=props)
    except (OSError, ssl.SSLError) as exc:
        raise _Failed(f"MQTT connect failed: {exc}") from None
    try:
        _loop_until(client, lambda: "connack" in result, timeout_s)
        code = result.get("connack")
        if code is None:
            raise _Failed("no CONNACK from the broker", "is this an MQTT port?")
        if code.is_failure:
            # `device add` refuses an id the server knows (this box's, as a rule): --reissue prints new ones.
            raise _Failed(f"login of {cfg.username or device_id!r} refused: {code}",
                          "check the device id and the password file; on the server, `fleet-server device add "
                          f"--reissue {device_id}` prints fresh credentials for this device (the old ones stop "
                          f"working; a device the server does not know yet: `fleet-server device add {device_id}`)")
        if not publish:
            return True, f"logged in as {cfg.username or device_id!r}"
        topic = topics.probe(device_id)  # a topic the device may write that the server does not store
        info = client.publish(topic, json.dumps({"probe": True, "at": utc_now_iso()}), qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise _Failed(f"publish failed: {mqtt.error_string(info.rc)}")
        _loop_until(client, lambda: "puback" in result, timeout_s)
        ack = result.get("puback")
        if ack is None:
            raise _Failed(f"no PUBACK for a publish on {topic}")
        if ack.is_failure:
            raise _Failed(f"publish on {topic} refused: {ack}",
                          "the broker's ACL does not let this login write under its device id: the login and "
                          "device.id must be the same")
        return True, f"published on {topic} (QoS 1, PUBACK {ack})"
    finally:
        client.disconnect()


def _loop_until(client: mqtt.Client, done: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        if client.loop(0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS and not done():
            return
