"""Files that survive a power cut: a van's box loses power whenever the ignition goes off, at any instant."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_durably(path: Path, text: str) -> None:
    """Replace PATH with TEXT so that after a power cut it holds the old text or the new, never an empty or half
    file: a temporary file beside it is written and fsynced, renamed over it, and the folder fsynced. (ext4
    flushes a file renamed over an existing one by itself, but not one under a new name, and FAT or f2fs on an
    SD card neither: a manifest written without the fsync came back empty and the new model was given up.)"""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the names in folder PATH (a rename, a new file) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
