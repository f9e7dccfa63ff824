"""Device ids, and time-ordered UUIDv7 (RFC 9562; the stdlib gains uuid.uuid7 only in Python 3.14)."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

# A device id is the vehicle's MQTT login, client id and topic segment. Messages and agent configs take any
# id of this shape, so that devices provisioned before the stricter rule below keep working.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
# A new device's id must also start with a letter or digit: `-veh-9` reads as an option to every command that
# takes the id afterwards (`device revoke -veh-9` failed as an unknown option), and `.`, `..` are path parts.
NEW_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NEW_DEVICE_ID_RULE = "1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"


def new_device_id_ok(device_id: str) -> bool:
    """Whether DEVICE_ID may be given to a new device (`device add`, `device import`)."""
    return NEW_DEVICE_ID.fullmatch(device_id) is not None  # fullmatch: `$` also matches before a final newline


_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    """A UUIDv7: 48-bit Unix ms, then a 12-bit counter that keeps ids monotonic within one ms."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return uuid.UUID(int=value)
