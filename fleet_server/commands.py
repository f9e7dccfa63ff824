"""Server -> device commands over MQTT (roadmon/v1/<id>/cmd/<name>) and remote model updates.

Devices answer on .../cmd/<name>/result; the ingest workers store those answers in `command_results`.
"""

from __future__ import annotations

import json
import logging
import shutil
import ssl
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.config import ServerConfig
from roadmon_contract import topics
from roadmon_contract.digest import sha256_file

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """A command could not be sent; the message says why."""


def publish(cfg: ServerConfig, topic: str, payload: dict[str, Any], timeout_s: float = 10.0) -> None:
    """Publish PAYLOAD on TOPIC with QoS 1 and wait for the broker's PUBACK."""
    m = cfg.mqtt
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(m.username, m.resolve_password())
    if m.tls:
        client.tls_set(ca_certs=str(m.ca_file) if m.ca_file else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    try:
        client.connect(m.host, m.port, keepalive=30)
    except OSError as exc:
        raise CommandError(f"broker {m.host}:{m.port} unreachable: {exc}") from None
    client.loop_start()
    try:
        info = client.publish(topic, json.dumps(payload), qos=1)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise CommandError(f"broker did not confirm the command within {timeout_s:g} s (login refused?)")
    finally:
        client.disconnect()
        client.loop_stop()


def send(cfg: ServerConfig, device_id: str, name: str, payload: dict[str, Any]) -> str:
    topic = topics.cmd(device_id, name)
    publish(cfg, topic, payload)
    return topic


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
    """Offer FILE to DEVICE_ID: stage it, then publish cmd/model-update {url, sha256, name, version[, signature]}
    (signature: base64 Ed25519 over the file's bytes, checked by devices that have model_update.public_key)."""
    sha = stage_model(cfg, file)
    base = (url_base or cfg.models.url_base).rstrip("/")
    payload = {"url": f"{base}/api/v1/models/{sha}.onnx", "sha256": sha, "name": name or file.stem,
               "version": version or sha[:12]}
    if signature:
        payload["signature"] = signature
    send(cfg, device_id, "model-update", payload)
    return payload
