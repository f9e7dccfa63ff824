"""Provisioning the simulated vehicles the way `fleet-server device add` does: a devices row and a broker login
in the broker's password file (fleet_server.mqtt_accounts), then one broker reload for all of them. HTTP
tokens are left out: the vehicles only speak MQTT. `remove_logins` takes the logins out again when a run ends, so
that the project's password file does not grow with every run."""

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


def remove_logins(passwd_file: Path, pid_file: Path | None, device_ids: list[str]) -> int:
    """Remove the broker logins of DEVICE_IDS (those add_logins wrote) in one write of the password file, under
    the lock every writer of it holds, and reload the broker once; returns how many were there."""
    gone = set(device_ids)
    if not gone or not passwd_file.exists():
        return 0
    with mqtt_accounts.locked(passwd_file):
        lines = passwd_file.read_text().splitlines()
        kept = [line for line in lines if line.split(":", 1)[0] not in gone]
        removed = len(lines) - len(kept)
        if removed:
            text = "".join(line + "\n" for line in kept)
            mqtt_accounts.write_new(passwd_file, text, like=passwd_file).replace(passwd_file)
    if removed and pid_file is not None and not mqtt_accounts.reload_broker(pid_file):
        log.warning("broker not reloaded: the removed logins still work until its next reload")
    return removed
