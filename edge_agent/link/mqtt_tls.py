"""Broker login material: the TLS context and the password, both read from files.

A relative file name is looked up in systemd's $CREDENTIALS_DIRECTORY (set by LoadCredential=) when that
exists, else taken as given, so a unit file can hand secrets to the agent without them touching the config.
A config read with `edge_agent.config.load` has made every other relative name absolute beside the config file.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_agent.config.uplink import UplinkConfig


class CredentialError(RuntimeError):
    """A credential file is missing or unreadable; the message names the file."""


def credential_path(name: str) -> Path:
    path = Path(name)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds and (Path(creds) / path).exists():
        return Path(creds) / path
    return path


def read_password(cfg: UplinkConfig) -> str | None:
    if not cfg.password_file:
        return None
    path = credential_path(cfg.password_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CredentialError(f"cannot read the MQTT password file {path}: {exc.strerror or exc}") from None
    if not lines or not lines[0]:
        raise CredentialError(f"the MQTT password file {path} is empty")
    return lines[0]


def tls_context(cfg: UplinkConfig) -> ssl.SSLContext:
    """Verified TLS 1.2+; client certificate when configured."""
    try:
        ctx = ssl.create_default_context(cafile=str(credential_path(cfg.ca_file)) if cfg.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(str(credential_path(cfg.cert_file)), str(credential_path(cfg.key_file)))
    except (OSError, ssl.SSLError) as exc:
        raise CredentialError(f"cannot load TLS files (ca={cfg.ca_file}, cert={cfg.cert_file}): {exc}") from None
    return ctx


def apply_login(client: mqtt.Client, cfg: UplinkConfig, device_id: str) -> None:
    """Set user name, password and TLS on CLIENT from CFG; raises CredentialError with the file's name."""
    password = read_password(cfg)
    if password is not None or not cfg.cert_file:
        client.username_pw_set(cfg.username or device_id, password)
    if cfg.tls:
        client.tls_set_context(tls_context(cfg))
