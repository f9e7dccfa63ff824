"""Server -> device commands over MQTT (roadmon/v1/<id>/cmd/<name>) and remote model updates.

Devices answer on .../cmd/<name>/result; the ingest workers store those answers in `command_results`.

Every command carries `command_id`, `issued_at` and `expires_at` (`commands.expire_after_h` later): the broker
keeps a QoS 1 command for a vehicle that is off, and an agent answers `expired` to one that waited too long
instead of acting on it. The same expiry goes out as the MQTT 5 message expiry, which the broker enforces on its
own clock: a Raspberry Pi without a clock chip runs days behind until NTP or GNSS sets it, and by its clock a
week-old command is still fresh. A model is offered with a signed download link (`model_link`): HMAC-SHA256 of
sha256, device and expiry under a server secret, so the agent needs no HTTP token to fetch it, the link works
for that device only and stops working when the command expires.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import shutil
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet_server import mqtt_accounts
from fleet_server.config import ServerConfig
from fleet_server.db import connect, one_row
from fleet_server.device_view import device_rows
from roadmon_contract import topics
from roadmon_contract.commands import expires_at
from roadmon_contract.digest import sha256_file
from roadmon_contract.times import utc_iso

log = logging.getLogger(__name__)

MODEL_UPDATE = "model-update"
# The commands an agent answers (edge_agent/detect/model_update.py, edge_agent/runtime/config_reload.py): any
# other name would only come back as "unknown command", and '/', '+' or '#' would not even be one topic.
RESEND = "resend"
KNOWN_COMMANDS = (MODEL_UPDATE, "config-reload", RESEND)  # edge_agent/link/resend.py too
SECRET_NAME = ".url-secret"


class CommandError(RuntimeError):
    """A command could not be sent; the message says why."""


def publish(cfg: ServerConfig, topic: str, payload: dict[str, Any], timeout_s: float = 10.0) -> None:
    """Publish PAYLOAD on TOPIC with QoS 1, its expires_at as the message expiry, and wait for the broker's
    PUBACK."""
    publish_all(cfg, [(topic, payload)], timeout_s)


def _properties(payload: dict[str, Any]) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    try:
        expiry = expires_at(payload)
    except ValueError as exc:
        raise CommandError(f"expires_at {payload.get('expires_at')!r} is not an RFC 3339 time: {exc}") from None
    if expiry is not None:
        left_s = math.ceil((expiry - datetime.now(UTC)).total_seconds())
        if left_s <= 0:
            raise CommandError(f"the command's expires_at {payload['expires_at']} has passed: nothing sent")
        properties.MessageExpiryInterval = left_s
    return properties


def publish_all(cfg: ServerConfig, messages: list[tuple[str, dict[str, Any]]], timeout_s: float = 10.0) -> None:
    """`publish` for each (topic, payload) of MESSAGES over one connection (a fleet of 10,000 is one login)."""
    properties = [_properties(payload) for _, payload in messages]
    with _logged_in(cfg, timeout_s) as client:
        infos = [client.publish(topic, json.dumps(payload), qos=1, properties=props)
                 for (topic, payload), props in zip(messages, properties, strict=True)]
        _confirmed(infos, timeout_s, "commands")


def clear_retained(cfg: ServerConfig, topic: str, timeout_s: float = 10.0) -> None:
    """Delete what is retained at the broker on TOPIC (an empty retained message)."""
    with _logged_in(cfg, timeout_s) as client:
        _confirmed([client.publish(topic, b"", qos=1, retain=True)], timeout_s, "clears")


@contextmanager
def _logged_in(cfg: ServerConfig, timeout_s: float) -> Iterator[mqtt.Client]:
    """A connection to the broker with the server's login, once the broker has accepted it; CommandError else."""
    m = cfg.mqtt
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(m.username, m.resolve_password())
    if m.tls:
        client.tls_set(ca_certs=str(m.ca_file) if m.ca_file else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    answered = threading.Event()
    connack: list = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        connack.append(reason)
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(m.host, m.port, keepalive=30)
    except OSError as exc:
        raise CommandError(f"broker {m.host}:{m.port} unreachable: {exc}") from None
    client.loop_start()
    try:
        # The login's answer first: publishing into a refused connection raised a traceback ("not currently
        # connected") or, by the timing, waited 30 s to say "login refused?".
        if not answered.wait(timeout_s):
            raise CommandError(f"broker {m.host}:{m.port} did not answer the server's login within {timeout_s:g} s")
        if connack[0].is_failure:
            raise CommandError(f"broker {m.host}:{m.port} refused the server's login ({connack[0]}): check "
                               "mqtt.username and mqtt.password_file")
        try:
            yield client
        except CommandError:
            raise
        except RuntimeError as exc:  # the broker closed the connection meanwhile
            raise CommandError(f"broker {m.host}:{m.port} closed the connection: {exc}") from None
    finally:
        client.disconnect()
        client.loop_stop()


def _confirmed(infos: list[mqtt.MQTTMessageInfo], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
    unconfirmed = sum(not info.is_published() for info in infos)
    if unconfirmed:
        raise CommandError(f"broker did not confirm {unconfirmed} of {len(infos)} {what} within {timeout_s:g} s "
                           "(login refused?)")


# ------------------------------------------------------------------------------------------ checks
def check_name(name: str) -> None:
    if name not in KNOWN_COMMANDS:
        raise CommandError(f"unknown command {name!r}: agents answer {', '.join(KNOWN_COMMANDS)}")


def check_device(cfg: ServerConfig, device_id: str) -> None:
    """Raise CommandError unless DEVICE_ID is a device of this server that is not revoked (a revoked one can
    no longer log in to take the command; a misspelt one never will)."""
    try:
        with connect(cfg.database) as conn:
            row = conn.execute("SELECT revoked_at FROM devices WHERE id = %s", (device_id,)).fetchone()
    except psycopg.OperationalError as exc:
        raise CommandError(f"cannot check device {device_id!r}: database unreachable ({exc})") from None
    if row is None:
        raise CommandError(f"no device {device_id!r} (`fleet-server device ls` lists them)")
    if row[0] is not None:
        raise CommandError(f"device {device_id!r} is revoked: it takes no commands")


def stamp(cfg: ServerConfig, now: datetime | None = None) -> dict[str, str]:
    """The envelope every command carries: a unique id (echoed in the result), when it was sent, and when the
    agent must no longer act on it."""
    now = now or datetime.now(UTC)
    return {"command_id": uuid.uuid4().hex, "issued_at": utc_iso(now, "seconds"),
            "expires_at": utc_iso(now + timedelta(hours=cfg.commands.expire_after_h), "seconds")}


def send(cfg: ServerConfig, device_id: str, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Publish command NAME to DEVICE_ID (both checked first); returns what was sent. PAYLOAD's own
    command_id / issued_at / expires_at, when given, win over the envelope's."""
    check_name(name)
    check_device(cfg, device_id)
    body = stamp(cfg) | payload
    publish(cfg, topics.cmd(device_id, name), body)
    return body


class Resent(NamedTuple):
    sent: list[str]         # the devices cmd/resend went to
    broker_only: list[str]  # of those, the ones only the broker's password file knows (added after the backup)
    no_login: list[str]     # of those, the ones the password file has no login for: revoked since the backup (or
                            # logging in with a client certificate), their answer will likely not come
    newest: datetime | None = None  # when the newest sighting this database holds was received


def newest_sighting(conn: psycopg.Connection) -> datetime | None:
    """When the newest sighting the database holds was received: after a restore, the dump's time."""
    return one_row(conn.execute("SELECT max(received_at) FROM sightings"))[0]


def resend(cfg: ServerConfig, since: datetime | None, rejected: bool, devices: list[str] | None = None,
           expire_after_h: float | None = None) -> Resent:
    """cmd/resend to DEVICES, or to every device that is not revoked: each box sends again what the server
    confirmed since SINCE (and with REJECTED what it refused). A restored database does not know the devices
    added after its dump, so the broker's password file (broker_files.passwd_file) names devices too; nor the
    revocations since, so a device the file has no login for is not counted as reached."""
    now = datetime.now(UTC)
    if since is None and not rejected:
        raise CommandError("give --since (what the boxes should send again from) and/or --rejected")
    if since is not None and since.tzinfo is None:
        raise CommandError("--since needs a zone (2026-12-06T02:00:00Z)")
    if since is not None and since > now + timedelta(minutes=5):  # a few minutes: the operator's clock
        raise CommandError(f"--since {utc_iso(since, 'seconds')} is in the future: no box has confirmed anything since")
    try:
        with connect(cfg.database) as conn:
            rows = device_rows(conn, now, stale_after_s=0)
            newest = newest_sighting(conn)
    except psycopg.OperationalError as exc:
        raise CommandError(f"cannot list the devices: database unreachable ({exc})") from None
    known = {r["id"]: r["state"] == "revoked" for r in rows}
    # A box whose clock ran behind stamped its confirmations early by as much (a Pi without a clock chip runs
    # hours or days off until NTP sets it): its window opens that much earlier.
    behind_s = {r["id"]: max(0.0, -(r["clock_offset_s"] or 0.0)) for r in rows}
    passwd = cfg.broker_files.passwd_file
    if passwd is not None and not passwd.is_file():
        # Read as empty, it made every device look revoked since the backup.
        raise CommandError(f"broker_files.passwd_file {passwd} does not exist: fix the setting (or leave it out)")
    logins = mqtt_accounts.device_logins(passwd, cfg.mqtt.username) if passwd is not None else set()
    reachable = {d for d, revoked in known.items() if not revoked} | {d for d in logins if d not in known}
    for device_id in devices or ():
        if known.get(device_id):
            raise CommandError(f"device {device_id!r} is revoked: it takes no commands")
        if device_id not in reachable:
            raise CommandError(f"no device {device_id!r} in the database or the broker's password file")
    devices = sorted(devices or reachable)
    # Revoked after the backup: the restored database lists the box, the broker no longer lets it in. Sent to
    # all the same (a box that logs in with a client certificate has no line there either), and named.
    # With the file set, however few logins it holds (one holding only the server's named nobody).
    no_login = [d for d in devices if d in known and d not in logins] if passwd is not None else []
    body: dict[str, Any] = {"rejected": rejected}
    if expire_after_h is not None:
        body["expires_at"] = utc_iso(now + timedelta(hours=expire_after_h), "seconds")

    def for_device(device_id: str) -> dict[str, Any]:
        if since is None:
            return body
        return body | {"since": utc_iso(since - timedelta(seconds=behind_s.get(device_id, 0.0)), "seconds")}

    publish_all(cfg, [(topics.cmd(d, RESEND), stamp(cfg, now) | for_device(d)) for d in devices], timeout_s=30.0)
    return Resent(devices, [d for d in devices if d not in known], no_login, newest)


# ----------------------------------------------------------------------------------------- models
def link_secret(cfg: ServerConfig) -> bytes:
    """The secret that signs model links: models.url_secret_file, else <models.dir>/.url-secret, made on first
    use. Made with link(2), so two processes making it at once end up with the same one."""
    if cfg.models.url_secret_file is not None:
        return cfg.models.read_secret(cfg.models.url_secret_file).encode()
    path = Path(cfg.models.dir) / SECRET_NAME
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{SECRET_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process was first: use its secret
    finally:
        tmp.unlink()
    return path.read_bytes().strip()


def link_signature(secret: bytes, sha: str, device_id: str, expires: int) -> str:
    return hmac.new(secret, f"{sha}\n{device_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


def model_link(cfg: ServerConfig, base: str, sha: str, device_id: str, expires_at: datetime) -> str:
    """<base>/api/v1/models/<sha>.onnx?device=..&expires=..&sig=..: a download only DEVICE_ID's link opens,
    until EXPIRES_AT."""
    expires = int(expires_at.timestamp())
    query = urlencode({"device": device_id, "expires": expires,
                       "sig": link_signature(link_secret(cfg), sha, device_id, expires)})
    return f"{base.rstrip('/')}/api/v1/models/{sha}.onnx?{query}"


def link_problem(cfg: ServerConfig, sha: str, device_id: str, expires: int, sig: str) -> str | None:
    """Why a signed model link does not open, or None when it does (the device's revocation is the caller's)."""
    if expires < datetime.now(UTC).timestamp():
        return "model link expired"
    if not hmac.compare_digest(link_signature(link_secret(cfg), sha, device_id, expires), sig):
        return "bad model link signature"
    return None


def onnx_problem(path: Path) -> str | None:
    """Why PATH is not an ONNX model, or None. The server has no ONNX Runtime (the agent's load check is the
    real test); parsing the protobuf catches a text file, a truncated copy or the wrong file."""
    import onnx  # only `model push` needs it

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not a ModelProto
        return f"not an ONNX model ({type(exc).__name__})"
    if not model.ir_version or not model.graph.node:
        return "not an ONNX model (no ir_version or an empty graph)"
    return None


def check_model_file(cfg: ServerConfig, file: Path) -> None:
    size_mb = file.stat().st_size / 1e6
    if size_mb > cfg.models.max_size_mb:
        raise CommandError(f"{file} is {size_mb:.1f} MB, over models.max_size_mb ({cfg.models.max_size_mb:g})")
    problem = onnx_problem(file)
    if problem:
        raise CommandError(f"{file}: {problem}")


def stage_model(cfg: ServerConfig, file: Path) -> str:
    """Copy FILE into the model folder as <sha256>.onnx; returns the sha256."""
    sha = sha256_file(file)
    folder = Path(cfg.models.dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{sha}.onnx"
    if not target.exists():
        tmp = target.with_suffix(".part")
        shutil.copyfile(file, tmp)
        tmp.replace(target)
    return sha


def push_model(cfg: ServerConfig, device_id: str, file: Path, url_base: str | None = None,
               name: str | None = None, version: str | None = None,
               signature: str | None = None) -> dict[str, Any]:
    """Offer FILE to DEVICE_ID: check the device and the file, stage it, then publish cmd/model-update
    {command_id, issued_at, expires_at, url, sha256, name, version[, signature]} with a signed link as url
    (signature: base64 Ed25519 over the file's bytes, checked by devices that have model_update.public_key)."""
    base = url_base or cfg.models.url_base
    if not base:
        raise CommandError("no URL for devices to download from: set models.url_base (the API's public https "
                           "address) or give --url-base")
    check_device(cfg, device_id)  # before staging: a misspelt or revoked device gets nothing
    check_model_file(cfg, file)
    sha = stage_model(cfg, file)
    head = stamp(cfg)
    expires_at = datetime.fromisoformat(head["expires_at"].replace("Z", "+00:00"))
    payload = head | {"url": model_link(cfg, base, sha, device_id, expires_at), "sha256": sha,
                      "name": name or file.stem, "version": version or sha[:12]}
    if signature:
        payload["signature"] = signature
    publish(cfg, topics.cmd(device_id, MODEL_UPDATE), payload)
    return payload
