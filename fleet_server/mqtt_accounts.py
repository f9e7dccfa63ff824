"""Mosquitto password-file accounts: the one place that writes broker logins.

Used by `fleet-server device add/revoke` and by the project's service script. Passwords are hashed
by `mosquitto_passwd` (PBKDF2-SHA512), so the broker and this code always agree on the format.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


# Broker logins a device may never take: the server's own (it reads every device's topics and publishes
# acks) and the project's prefix, kept for the server's logins.
RESERVED_PREFIX = "roadmon"


def reserved(device_id: str, server_user: str) -> bool:
    """Whether DEVICE_ID would take (or could later clash with) a login the server needs."""
    name = device_id.lower()
    return name == server_user.lower() or name.startswith(RESERVED_PREFIX)


def set_password(passwd_file: Path, user: str, password: str) -> None:
    """Create or update USER in the broker's password file."""
    if ":" in user or not user:
        raise ValueError(f"invalid MQTT user name {user!r}")
    passwd_file.parent.mkdir(parents=True, exist_ok=True)
    args = ["mosquitto_passwd", "-b", str(passwd_file), user, password]
    if not passwd_file.exists():
        args.insert(1, "-c")
    subprocess.run(args, check=True, capture_output=True)


def remove_user(passwd_file: Path, user: str) -> bool:
    """Remove USER from the password file; False when it was not there."""
    if not passwd_file.exists():
        return False
    lines = passwd_file.read_text().splitlines()
    kept = [line for line in lines if line.split(":", 1)[0] != user]
    if len(kept) == len(lines):
        return False
    passwd_file.write_text("".join(line + "\n" for line in kept))
    return True


def reload_broker(pid_file: Path) -> bool:
    """Ask a running Mosquitto to re-read its password and ACL files (SIGHUP)."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError) as exc:
        log.warning("broker not reloaded (%s): %s", pid_file, exc)
        return False
    return True


# The broker ACL limits every device to its own id with patterns (%u = the login = the device id), so adding
# a device needs no per-device ACL line; this list is what `ensure_device_patterns` makes sure is present.
DEVICE_PATTERNS = (
    "pattern write roadmon/v1/%u/event",
    "pattern write roadmon/v1/%u/coverage",
    "pattern readwrite roadmon/v1/%u/status",
    "pattern read roadmon/v1/%u/ack",
    "pattern read roadmon/v1/%u/cmd/#",
    "pattern write roadmon/v1/%u/cmd/+/result",
)


def ensure_device_patterns(acl_file: Path, server_user: str | None = None) -> list[str]:
    """Append any missing per-device pattern to ACL_FILE (a new file also gets SERVER_USER's roadmon/# line);
    returns the lines added."""
    exists = acl_file.exists()
    have = set(acl_file.read_text().splitlines()) if exists else set()
    missing = [line for line in DEVICE_PATTERNS if line not in have]
    if missing:
        acl_file.parent.mkdir(parents=True, exist_ok=True)
        head = f"user {server_user}\ntopic readwrite roadmon/#\n" if server_user and not exists else ""
        with acl_file.open("a") as f:
            f.write(head + "\n# per-device limits (added by fleet-server device add)\n" + "\n".join(missing) + "\n")
        acl_file.chmod(0o600)
    return missing
