"""NMEA 0183 sentences for the simulated receiver: RMC, VTG, GGA and GST with valid checksums."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from functools import reduce

KNOTS_PER_MPS = 3600.0 / 1852.0


def checksum(body: str) -> str:
    """XOR of the characters between '$' and '*', two hex digits."""
    return f"{reduce(lambda acc, ch: acc ^ ord(ch), body, 0):02X}"


def sentence(body: str) -> str:
    return f"${body}*{checksum(body)}"


def _lat(lat: float) -> tuple[str, str]:
    a = abs(lat)
    deg = int(a)
    minutes = (a - deg) * 60
    if round(minutes, 5) >= 60:  # 59.999996 would print as 60.00000
        deg, minutes = deg + 1, 0.0
    return f"{deg:02d}{minutes:08.5f}", "N" if lat >= 0 else "S"


def _lon(lon: float) -> tuple[str, str]:
    a = abs(lon)
    deg = int(a)
    minutes = (a - deg) * 60
    if round(minutes, 5) >= 60:
        deg, minutes = deg + 1, 0.0
    return f"{deg:03d}{minutes:08.5f}", "E" if lon >= 0 else "W"


@dataclass(frozen=True)
class Epoch:
    """One receiver solution."""

    utc: dt.datetime
    lat: float
    lon: float
    alt_m: float
    speed_mps: float
    course_deg: float          # true course over ground
    sats: int
    hdop: float
    sigma_lat_m: float         # 1-sigma errors as the receiver reports them in GST
    sigma_lon_m: float
    sigma_alt_m: float
    geoid_sep_m: float = 47.0  # geoid above the ellipsoid around Munich


def epoch_sentences(e: Epoch, talker: str = "GP") -> list[str]:
    """RMC, VTG, GGA, GST for one epoch (the order many u-blox receivers use)."""
    hhmmss = e.utc.strftime("%H%M%S") + f".{e.utc.microsecond // 10000:02d}"
    ddmmyy = e.utc.strftime("%d%m%y")
    lat, ns = _lat(e.lat)
    lon, ew = _lon(e.lon)
    knots = e.speed_mps * KNOTS_PER_MPS
    course = f"{e.course_deg % 360:.2f}"
    rms = math.hypot(e.sigma_lat_m, e.sigma_lon_m)
    return [
        sentence(f"{talker}RMC,{hhmmss},A,{lat},{ns},{lon},{ew},{knots:.3f},{course},{ddmmyy},,,A"),
        sentence(f"{talker}VTG,{course},T,,M,{knots:.3f},N,{e.speed_mps * 3.6:.3f},K,A"),
        sentence(f"{talker}GGA,{hhmmss},{lat},{ns},{lon},{ew},1,{e.sats:02d},{e.hdop:.2f},{e.alt_m:.1f},M,"
                 f"{e.geoid_sep_m:.1f},M,,"),
        sentence(f"{talker}GST,{hhmmss},{rms:.2f},{e.sigma_lat_m:.2f},{e.sigma_lon_m:.2f},0.0,"
                 f"{e.sigma_lat_m:.2f},{e.sigma_lon_m:.2f},{e.sigma_alt_m:.2f}"),
    ]
