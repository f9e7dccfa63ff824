"""One log line format for the agent and the server: UTC with a Z, as every time the project writes (a log in
the box's local time disagreed with its own queue's times by the zone's offset)."""

from __future__ import annotations

import logging
import time

FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"


def log_in_utc(level: int) -> None:
    """logging.basicConfig at LEVEL, stamped in UTC."""
    logging.basicConfig(level=level, format=FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None:
            handler.formatter.converter = time.gmtime
