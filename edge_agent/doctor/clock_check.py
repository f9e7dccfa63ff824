"""Is the system clock right? TLS certificate checks and every log line depend on it; a Pi has no RTC and
starts at the last shutdown's time until NTP (or GNSS time) corrects it."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta

from edge_agent.doctor.result import CheckResult, Context, Level
from edge_agent.gnss.epochs import GPS_ROLLOVER

EARLIEST = datetime(2025, 1, 1, tzinfo=UTC)  # a clock before this was never set
AGREE_S = 2.0          # system clock and GNSS UTC further apart than this: yellow
BROKEN_S = 3600.0      # this far apart: red (certificates may be "not yet valid")
ROLLOVER_S = GPS_ROLLOVER.total_seconds()


def _run(*args: str) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def ntp_state() -> tuple[bool | None, str]:
    """(synchronised?, which tool said so); None when no tool could tell."""
    chrony = _run("chronyc", "-n", "tracking")
    if chrony:
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in chrony.splitlines())}
        leap = fields.get("Leap status", "")
        return leap != "Not synchronised" and bool(leap), f"chrony: {fields.get('System time', leap)}"
    synced = _run("timedatectl", "show", "-p", "NTPSynchronized", "--value")
    if synced:
        return synced.strip() == "yes", "timedatectl"
    return None, "neither chronyc nor timedatectl could tell"


def _offset_text(offset_s: float) -> str:
    """Seconds while they read well; a clock months off reads in days (+17882327.87 s says little)."""
    if abs(offset_s) < 3600:
        return f"{offset_s:+.2f} s"
    if abs(offset_s) < 2 * 86400:
        return f"{offset_s / 3600:+.1f} h"
    return f"{offset_s / 86400:+.1f} days"


def _rollover_weeks(offset_s: float) -> int | None:
    """1024, 2048... when the clock is that many weeks (within two days) ahead of the receiver's date."""
    periods = round(offset_s / ROLLOVER_S)
    return periods * 1024 if periods >= 1 and abs(offset_s - periods * ROLLOVER_S) < 2 * 86400 else None


def check_clock(ctx: Context) -> CheckResult:
    now = datetime.now(UTC)
    synced, source = ntp_state()
    data: dict = {"system_utc": now.isoformat(), "ntp_synchronized": synced, "ntp_source": source}
    if now < EARLIEST:
        return CheckResult("clock", Level.RED, f"system clock says {now:%Y-%m-%d %H:%M} UTC, which is in the past",
                           "TLS to the broker fails with 'certificate not yet valid', and logs carry wrong times",
                           "enable NTP (`timedatectl set-ntp true`) or use GNSS time (gpsd + chrony refclock)", data)
    offset = None
    if ctx.gnss_utc is not None and ctx.gnss_utc_mono is not None:
        gnss_now = ctx.gnss_utc + timedelta(seconds=time.monotonic() - ctx.gnss_utc_mono)
        offset = (now - gnss_now).total_seconds()
        data["offset_vs_gnss_s"] = round(offset, 3)
    ntp_text = {True: "NTP synchronised", False: "NTP not synchronised", None: "NTP state unknown"}[synced]
    summary = f"{now:%Y-%m-%d %H:%M:%S} UTC, {ntp_text} ({source})"
    if offset is not None:
        summary += f", {_offset_text(offset)} vs GNSS"
        if weeks := _rollover_weeks(offset):
            return CheckResult("clock", Level.RED, summary, f"the GNSS receiver's date is {weeks} weeks behind the "
                               "clock: a GPS week rollover (an old receiver's date window has passed), so every "
                               "event is dated years back and refused", f"set `gnss.date_floor = {now:%Y-%m-%d}` in "
                               "the agent config (the system clock is right: leave it)", data)
        if abs(offset) > BROKEN_S:
            return CheckResult("clock", Level.RED, summary, "the system clock is far from GNSS time",
                               "set the clock (`timedatectl set-ntp true`, or chrony with a GNSS refclock)", data)
        if abs(offset) > AGREE_S:
            return CheckResult("clock", Level.YELLOW, summary, "the system clock drifts from GNSS time",
                               "check NTP (`chronyc sources`) or add the GNSS receiver as a chrony refclock", data)
        return CheckResult("clock", Level.GREEN, summary, data=data)
    if synced:
        return CheckResult("clock", Level.GREEN, summary, data=data)
    why = _no_gnss_time(ctx)
    data["no_gnss_time"] = why
    return CheckResult("clock", Level.YELLOW, summary,
                       f"the clock cannot be confirmed: no NTP synchronisation, and no GNSS time to compare with "
                       f"({why})", "enable NTP (`timedatectl set-ntp true`) once the box has network", data)


def _no_gnss_time(ctx: Context) -> str:
    """Why there is no GNSS UTC to compare with, as the GNSS check found it (or why it did not look)."""
    if ctx.gnss_no_time:
        return ctx.gnss_no_time
    if ctx.cfg is None:
        return "the config did not load, so GNSS was not checked"
    return "GNSS was not checked (run doctor with the gnss check too)"
