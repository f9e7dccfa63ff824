"""Mosquitto password-file accounts: the one place that writes broker logins.

Used by `fleet-server device add/revoke/import` and by the project's service script. Passwords are hashed
here in mosquitto_passwd's own format (a password on `mosquitto_passwd -b`'s command line was readable by any
local user in /proc). Every writer holds one lock on the file and replaces it whole, so a revoke or an add
during a bulk import is neither lost nor undone, and the broker never reads half a file.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

# mosquitto_passwd 2.0's format: $7$<iterations>$<12-byte salt, base64>$<PBKDF2-SHA512, base64>. 101 iterations
# is what mosquitto_passwd itself uses by default, so the broker checks a login at the same cost either way.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """PASSWORD hashed as `mosquitto_passwd` writes it (PBKDF2-SHA512)."""
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def new_password() -> str:
    """A device's broker password (192 bits). Never one starting with "-": the credentials sheet goes to a
    technician's spreadsheet, which reads such a cell as a formula and shows something else."""
    while (password := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return password


@contextmanager
def locked(passwd_file: Path) -> Iterator[None]:
    """Serialise writers of the password file (two imports, or an import and `device add`, at once)."""
    passwd_file.parent.mkdir(parents=True, exist_ok=True)
    with open(passwd_file.with_name(passwd_file.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_new(path: Path, text: str, like: Path | None = None) -> Path:
    """TEXT in a new mode-600 file next to PATH (fsynced); returns the temporary name to rename over PATH.
    It takes LIKE's owner when it can (a broker running as its own user must still read it)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if like is not None and like.exists():
            st = like.stat()
            with suppress(PermissionError):
                os.chown(tmp, st.st_uid, st.st_gid)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _lines(passwd_file: Path) -> list[str]:
    return passwd_file.read_text().splitlines() if passwd_file.exists() else []


def _replace(passwd_file: Path, lines: list[str]) -> None:
    write_new(passwd_file, "".join(line + "\n" for line in lines), like=passwd_file).replace(passwd_file)


# Broker logins a device may never take: the server's own (it reads every device's topics and publishes
# acks) and the project's prefix, kept for the server's logins.
RESERVED_PREFIX = "roadmon"


def device_logins(passwd_file: Path, server_user: str) -> set[str]:
    """The device logins in the broker's password file (not the server's own, nor any reserved name)."""
    users = {line.split(":", 1)[0] for line in _lines(passwd_file) if ":" in line}
    return {user for user in users if user and not reserved(user, server_user)}


def reserved(device_id: str, server_user: str) -> bool:
    """Whether DEVICE_ID would take (or could later clash with) a login the server needs."""
    name = device_id.lower()
    return name == server_user.lower() or name.startswith(RESERVED_PREFIX)


def set_password(passwd_file: Path, user: str, password: str) -> None:
    """Create or update USER in the broker's password file."""
    set_passwords(passwd_file, {user: password})


def set_passwords(passwd_file: Path, logins: dict[str, str]) -> None:
    """Create or update every user -> password of LOGINS in one write of the broker's password file."""
    bad = [user for user in logins if ":" in user or not user or "\n" in user]
    if bad:
        raise ValueError(f"invalid MQTT user name {bad[0]!r}")
    with locked(passwd_file):
        kept = [line for line in _lines(passwd_file) if line.split(":", 1)[0] not in logins]
        _replace(passwd_file, kept + [f"{user}:{mosquitto_hash(pw)}" for user, pw in logins.items()])


def remove_user(passwd_file: Path, user: str) -> bool:
    """Remove USER from the password file; False when it was not there."""
    with locked(passwd_file):
        lines = _lines(passwd_file)
        kept = [line for line in lines if line.split(":", 1)[0] != user]
        if len(kept) == len(lines):
            return False
        _replace(passwd_file, kept)
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
