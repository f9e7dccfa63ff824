"""Is a lost camera there again? A cheap look, made between reopen attempts.

Reopening waits with a growing backoff (up to camera.reopen_max_s, 30 s), so a USB camera replugged or an IP
camera back from a reboot went unused for up to that long: 600 m of road at 20 m/s. Looking every half second
for the camera's device node (V4L2) or its open TCP port (RTSP/HTTP) costs nothing, and a camera that was gone
and is there again is reopened at once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from edge_agent.config.camera import source_kind

DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935}
CONNECT_TIMEOUT_S = 0.3


def presence_probe(source: str) -> Callable[[], bool] | None:
    """A function that tells whether SOURCE's camera is there (a device node, a port that accepts), or None
    for sources with nothing cheap to look at (a GStreamer pipeline, a file, a URL without a host)."""
    kind = source_kind(source)
    text = source.strip()
    if kind == "device":
        node = Path(f"/dev/video{text}" if text.isdigit() else text)
        return node.exists
    if kind == "url":
        parts = urlsplit(text)
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:  # a port that is not a number: the open itself says what is wrong
            return None
        host = parts.hostname
        if not host or port is None:
            return None
        return lambda: _accepts(host, port)
    return None


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False
