"""Log lines are stamped in UTC, whatever the box's time zone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime


def test_a_log_line_is_stamped_in_utc_with_a_z() -> None:
    """Under TZ=Europe/Berlin an agent's log said 06:22 while its queue said 05:22Z."""
    code = ("import logging; from roadmon_contract.logs import log_in_utc; log_in_utc(logging.INFO); "
            "logging.getLogger('x').info('hello')")
    before = datetime.now(UTC)
    out = subprocess.run([sys.executable, "-c", code], env=os.environ | {"TZ": "Asia/Tokyo"}, capture_output=True,
                         text=True, check=True).stderr
    stamp = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z INFO x: hello", out)
    assert stamp, out
    logged = datetime.fromisoformat(stamp[1]).replace(tzinfo=UTC)
    assert abs((logged - before).total_seconds()) < 30

