"""One writer per outbox. A second `edge-agent run` on the same box (a unit started twice, a technician's run
beside the service), or a replay into the live outbox, would hand out the same `seq` to two events and take
the first one's MQTT session over and over (one client id per device). The lock is an flock on `<outbox>.lock`,
so a crashed agent never leaves it held: the kernel drops it with the process."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def lock_path(outbox: Path) -> Path:
    return outbox.with_name(outbox.name + ".lock")


class OutboxBusy(OSError):
    """Another process writes this outbox."""


class WriterLock:
    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.path = lock_path(outbox)
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        """Hold the lock, or raise OutboxBusy naming the holder. A lock file that cannot be made (read-only or
        full disk) is logged and skipped: losing the guard is better than not starting."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            log.warning("outbox lock %s: %s; running without the one-writer guard", self.path, exc)
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutboxBusy(f"another edge-agent (pid {holder}) is writing {self.outbox}: stop it first "
                             "(`systemctl stop edge-agent`), or give this one its own outbox (--outbox)") from None
        with contextlib.suppress(OSError):  # the pid is for the message above only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def holder(outbox: Path) -> int | None:
    """The pid of the process that writes OUTBOX now (an `edge-agent run` or a replay into it), or None when
    none does. For doctor and status: a status file can be old while its agent runs (a full disk)."""
    try:
        fd = os.open(lock_path(outbox), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1  # held; -1: by a process that could not write its pid
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the shared lock taken just now
    return None
