"""Provisioning the simulated vehicles the way `fleet-server device add` does: a devices row and a broker login
in the broker's password file (fleet_server.mqtt_accounts), then one broker reload for all of them. HTTP
tokens are left out: the vehicles only speak MQTT."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import psycopg

from fleet_server import mqtt_accounts

log = logging.getLogger(__name__)


def provision(dsn: str, passwd_file: Path, pid_file: Path | None, device_ids: list[str]) -> dict[str, str]:
    """Create DEVICE_IDS (rows and broker logins); returns device id -> MQTT password."""
    add_rows(dsn, device_ids)
    return add_logins(passwd_file, pid_file, device_ids)


def add_rows(dsn: str, device_ids: list[str]) -> None:
    """The devices rows (a fresh database for devices whose logins exist already)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id, name) SELECT d, 'fleet simulator' FROM unnest(%s::text[]) AS d "
                     "ON CONFLICT (id) DO UPDATE SET revoked_at = NULL", (device_ids,))


def add_logins(passwd_file: Path, pid_file: Path | None, device_ids: list[str]) -> dict[str, str]:
    """Broker logins for DEVICE_IDS and one reload; returns device id -> MQTT password."""
    creds = {d: secrets.token_urlsafe(18) for d in device_ids}
    mqtt_accounts.set_passwords(passwd_file, creds)  # one write for all of them, as `device import` does
    if pid_file is not None and not mqtt_accounts.reload_broker(pid_file):
        log.warning("broker not reloaded: the new logins apply after its next reload")
    return creds
