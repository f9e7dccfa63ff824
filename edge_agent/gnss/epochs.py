"""Sentences of one receiver epoch -> one `Fix`.

A receiver sends several sentences per measurement epoch (RMC, GGA, GSA, VTG, ...). Sentences that carry a
time of day open and close epochs: a new time closes the open epoch. Sentences without a time (GSA, VTG) join
the open epoch while it still lacks sentence types it had last time; otherwise they wait, and go to the epoch
that is closing if it lacks their type, else to the next one, because receivers differ on whether they send
them before or after the timed ones (u-blox after, SiRF before).

Dates come from RMC and ZDA; an epoch before any date has no UTC. Midnight is crossed by the time of day
wrapping; two-digit years pivot at 1980; dates before `date_floor` are a GPS week rollover. Every value is
checked strictly: a field that does not parse or is out of range is unknown (None), never a guess.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field

import pynmea2

log = logging.getLogger(__name__)

KNOT_MPS = 1852.0 / 3600.0
GPS_ROLLOVER = dt.timedelta(weeks=1024)
NOT_MEASURED_FAA = frozenset("EMS")  # FAA modes: estimated (dead reckoning), manual input, simulator
NOT_MEASURED_QUALITY = frozenset({6, 7, 8})  # GGA qualities: the same three
# Carrier-phase (RTK) fixes are centimetres to decimetres, not HDOP x uere_m's metres: without GST, their stated
# error is HDOP x these (a ZED-F9P's RTK fixed is ~0.01 m + 1 ppm, float 0.2-1 m). GGA quality 4/5, FAA R/F.
RTK_UERE_M = {"rtk_fixed": 0.03, "rtk_float": 0.5}
RTK_QUALITY = {4: "rtk_fixed", 5: "rtk_float"}
RTK_FAA = {"R": "rtk_fixed", "F": "rtk_float"}
LATE_DATE_S = 10.0  # seconds after UTC midnight in which a sentence may still carry yesterday's date
UTC_EPOCH_2000 = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_DAY_S = 86400.0
MAX_SPEED_MPS = 600.0  # faster than any road vehicle by far; beyond it a speed field is garbage
_GSA_KEEP_EPOCHS = 3
_MIN_FIELDS = 16  # the highest field index read is 15 (GSA's HDOP)
_PAD = [""] * _MIN_FIELDS
TIMED_TYPES = frozenset({"RMC", "GGA", "GLL", "GNS", "ZDA", "GST"})


@dataclass(frozen=True)
class Fix:
    """One receiver epoch. Unknown values are None; lat/lon are None when mode is 0 (no fix).

    t_mono: live, time.monotonic() at the epoch's arrival minus the receiver latency; from a recording, the
    virtual clock `virtual_mono(utc)` (NaN for an epoch before the recording's first date)."""

    utc: dt.datetime | None
    t_mono: float
    mode: int  # 0 no fix, 2 = 2D, 3 = 3D
    lat: float | None
    lon: float | None
    alt_m: float | None
    speed_mps: float | None
    track_deg: float | None
    eph_m: float | None  # horizontal 1-sigma (DRMS) error estimate in metres
    hdop: float | None
    sats: int | None
    # Not measured: dead reckoning (FAA mode E, GGA quality 6), manual input (M, 7) or a simulator (S, 8; a
    # receiver's demo mode sends these, as a Garmin Geko does).
    estimated: bool = False
    rtk: str | None = None  # "rtk_fixed" or "rtk_float": a carrier-phase fix (GGA quality 4/5, FAA mode R/F)


def fix_position(fix: Fix) -> tuple[float, float]:
    """A fix's (lat, lon), for code that takes only fixes with a position (raises ValueError for one without)."""
    if fix.lat is None or fix.lon is None:
        raise ValueError(f"a fix without a position (mode {fix.mode}) where one with a position was needed")
    return fix.lat, fix.lon


def fix_kind(fix: Fix) -> str:
    """How a technician names the fix: "no fix", "2D fix", "3D fix", "RTK fixed" or "RTK float"."""
    if fix.mode and fix.rtk:
        return {"rtk_fixed": "RTK fixed", "rtk_float": "RTK float"}[fix.rtk]
    return {0: "no fix", 2: "2D fix", 3: "3D fix"}.get(fix.mode, f"mode {fix.mode}")


def virtual_mono(utc: dt.datetime) -> float:
    """The virtual monotonic clock of recordings: seconds of UTC since 2000-01-01."""
    return (utc - UTC_EPOCH_2000).total_seconds()


# --- strict field converters: return None for anything that is not a valid value


def to_float(text: str) -> float | None:
    if not text or "_" in text:  # Python reads "1_0.0" as 10.0; no receiver writes that
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def to_int(text: str) -> int | None:
    if not text or not text.isdigit():
        return None
    return int(text)


def time_of_day(text: str) -> float | None:
    """hhmmss[.sss] -> seconds of the day."""
    if len(text) < 6 or not text[:6].isdigit():
        return None
    hh, mm, ss = int(text[0:2]), int(text[2:4]), int(text[4:6])
    frac = 0.0
    if len(text) > 6:
        if text[6] != "." or (len(text) > 7 and not text[7:].isdigit()):
            return None
        frac = float("0" + text[6:]) if len(text) > 7 else 0.0
    if hh > 23 or mm > 59 or ss > 59:
        return None
    return round(hh * 3600 + mm * 60 + ss + frac, 3)


def coordinate(text: str, hemisphere: str, max_deg: int) -> float | None:
    """(d)ddmm.mmmm + N/S/E/W -> signed degrees."""
    if hemisphere not in ("N", "S", "E", "W") or len(text) < 4:
        return None
    dot = text.find(".")
    if dot < 0:
        dot = len(text)
    whole, frac = text[:dot], text[dot + 1:]
    if dot < 3 or not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    degrees = int(whole[:-2])
    minutes = float(text[dot - 2:]) if frac else float(whole[-2:])
    if minutes >= 60.0:
        return None
    value = degrees + minutes / 60.0
    if value > max_deg:
        return None
    return -value if hemisphere in ("S", "W") else value


def latitude(text: str, hemisphere: str) -> float | None:
    return coordinate(text, hemisphere, 90) if hemisphere in ("N", "S") else None


def longitude(text: str, hemisphere: str) -> float | None:
    return coordinate(text, hemisphere, 180) if hemisphere in ("E", "W") else None


def speed_mps(value: float | None, per_mps: float) -> float | None:
    if value is None or value < 0:
        return None
    mps = value / per_mps
    return mps if mps <= MAX_SPEED_MPS else None


def track(text: str) -> float | None:
    value = to_float(text)
    if value is None or not 0.0 <= value <= 360.0:
        return None
    return value % 360.0


def dop(text: str) -> float | None:
    value = to_float(text)
    # 0 is what some receivers send for "unknown"; a real DOP is at least ~0.5.
    return value if value is not None and 0.0 < value < 100.0 else None


def error_sigma(text: str) -> float | None:
    value = to_float(text)
    # 0 is "unknown" on receivers without an error model (a real fix is never exact); beyond 10 km the figure is
    # garbage, and squaring it overflows the filter's variance.
    return value if value is not None and 0.0 < value < 1e4 else None


def make_date(day: int, month: int, year: int, floor: dt.date) -> dt.date | None:
    try:
        date = dt.date(year, month, day)
    except ValueError:
        return None
    while date < floor:  # GPS week rollover: a receiver counting from an old 1024-week window
        date += GPS_ROLLOVER
    return date


def two_digit_year(yy: int) -> int:
    return 1900 + yy if yy >= 80 else 2000 + yy  # GPS began in 1980


@dataclass(slots=True)
class _Epoch:
    tod: float
    t_arrival: float
    date: dt.date | None = None
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    speed: float | None = None
    track: float | None = None
    hdop: float | None = None
    gsa_hdop: float | None = None
    sats: int | None = None
    gsa_mode: int | None = None
    sigma_lat: float | None = None
    sigma_lon: float | None = None
    no_fix: bool = False
    seen_fix: bool = False
    estimated: bool = False
    rtk: str | None = None
    types: set[str] = field(default_factory=set)


@dataclass
class EpochStats:
    epochs: int = 0
    fixes: int = 0
    no_date: int = 0
    time_backwards: int = 0
    midnight_rollovers: int = 0
    late_dates: int = 0  # yesterday's date in the first LATE_DATE_S after midnight: kept rolled
    week_rollovers: int = 0
    future_dates: int = 0  # live dates a rollover would move past the box's clock: not used


class EpochAssembler:
    """Feed pynmea2 sentences in order with their arrival time; get one Fix per completed epoch."""

    def __init__(self, uere_m: float = 4.0, date_floor: dt.date = dt.date(2000, 1, 1),
                 virtual_clock: bool = False) -> None:
        self.uere_m = uere_m
        self.date_floor = date_floor
        # Recordings stamp fixes on a clock made of their own UTC; live sources use arrival times.
        self.virtual_clock = virtual_clock
        self.stats = EpochStats()
        self._open: _Epoch | None = None
        self._pending: list[tuple[str, list[str]]] = []
        self._last_types: set[str] = set()
        self._date: dt.date | None = None
        self._rolled = False  # _date came from a midnight rollover that no sentence has dated yet
        self._last_tod: float | None = None
        self._last_utc: dt.datetime | None = None
        self._gsa_recent: tuple[int | None, float | None, int] = (None, None, _GSA_KEEP_EPOCHS)
        self._tod_text = ""
        self._tod_value: float | None = None
        self._position_key: tuple[str, ...] = ()
        self._position_value: tuple[float | None, float | None] = (None, None)
        self._ddmmyy_text = ""
        self._ddmmyy_date: dt.date | None = None
        self._appliers = {"RMC": self._apply_RMC, "GGA": self._apply_GGA, "GLL": self._apply_GLL,
                          "GNS": self._apply_GNS, "GSA": self._apply_GSA, "VTG": self._apply_VTG,
                          "ZDA": self._apply_ZDA, "GST": self._apply_GST}

    # --- input

    def feed(self, sentence: pynmea2.TalkerSentence, t_arrival: float = 0.0) -> Fix | None:
        """Add one sentence; returns the previous epoch's Fix when this sentence starts a new epoch."""
        kind = sentence.sentence_type
        data = sentence.data
        if len(data) < _MIN_FIELDS:  # short sentences read as empty fields, without a bounds check per field
            data = data + _PAD[len(data):]
        tod = self._sentence_tod(kind, data)
        if tod is None:
            if self._open is not None and not self._open.types >= self._last_types:
                self._apply(self._open, kind, data)
            else:
                self._pending.append((kind, data))
            return None
        done = None
        if self._open is None or tod != self._open.tod:
            done = self.close()
            self._open = self._start_epoch(tod, t_arrival)
        epoch = self._open
        for waiting_kind, waiting_data in self._pending:
            self._apply(epoch, waiting_kind, waiting_data)
        self._pending.clear()
        self._apply(epoch, kind, data)
        return done

    def close(self) -> Fix | None:
        """Finish the open epoch (at a new time, on an idle line, or at the end of input)."""
        epoch, self._open = self._open, None
        if epoch is None:
            return None
        # Timeless sentences of a type the epoch still lacks were sent after its timed ones: they are its own.
        waiting, self._pending = self._pending, []
        for kind, data in waiting:
            if kind in epoch.types:
                self._pending.append((kind, data))
            else:
                self._apply(epoch, kind, data)
        self._last_types = epoch.types
        return self._finish(epoch)

    # --- epochs

    def _sentence_tod(self, kind: str, data: list[str]) -> float | None:
        if kind not in TIMED_TYPES:
            return None
        text = data[4] if kind == "GLL" else data[0]
        if text != self._tod_text:  # several sentences of an epoch carry the same time: parse it once
            self._tod_text, self._tod_value = text, time_of_day(text)
        return self._tod_value

    def _start_epoch(self, tod: float, t_arrival: float) -> _Epoch:
        epoch = _Epoch(tod=tod, t_arrival=t_arrival)
        if self._date is not None and self._last_tod is not None and tod < self._last_tod - _DAY_S / 2:
            self._date += dt.timedelta(days=1)  # UTC midnight; an RMC/ZDA of this epoch may still correct it
            self._rolled = True
            self.stats.midnight_rollovers += 1
        epoch.date = self._date
        self._last_tod = tod
        return epoch

    def _set_date(self, epoch: _Epoch, date: dt.date | None) -> None:
        if date is None:
            return
        if (self._rolled and self._date is not None and date == self._date - dt.timedelta(days=1)
                and epoch.tod < LATE_DATE_S):
            # A receiver whose RMC date turns a second or two after its time: those fixes were dated a day back
            # (the filter reset twice, "time went backwards"). Yesterday's date just after midnight is late.
            self.stats.late_dates += 1
            return
        self._rolled = False
        epoch.date = date
        self._date = date

    def _apply(self, epoch: _Epoch, kind: str, data: list[str]) -> None:
        epoch.types.add(kind)
        self._appliers[kind](epoch, data)

    def _position(self, epoch: _Epoch, lat_text: str, lat_hemi: str, lon_text: str, lon_hemi: str) -> None:
        key = (lat_text, lat_hemi, lon_text, lon_hemi)
        if key != self._position_key:  # RMC, GGA and GLL of one epoch repeat the same text: parse it once
            self._position_key = key
            self._position_value = latitude(lat_text, lat_hemi), longitude(lon_text, lon_hemi)
        lat, lon = self._position_value
        if lat is not None and lon is not None:
            epoch.lat, epoch.lon = lat, lon

    def _apply_RMC(self, epoch: _Epoch, data: list[str]) -> None:
        status, faa = data[1], data[11]
        if status != "A" or faa == "N":
            epoch.no_fix = True
        else:
            epoch.seen_fix = True
            epoch.estimated |= faa in NOT_MEASURED_FAA
            epoch.rtk = epoch.rtk or RTK_FAA.get(faa)
            self._position(epoch, data[2], data[3], data[4], data[5])
        speed = speed_mps(to_float(data[6]), 1 / KNOT_MPS)
        if speed is not None:
            epoch.speed = speed
        course = track(data[7])
        if course is not None:
            epoch.track = course
        ddmmyy = data[8]
        if ddmmyy != self._ddmmyy_text and len(ddmmyy) == 6 and ddmmyy.isdigit():  # a new date: parse it once
            year = two_digit_year(int(ddmmyy[4:6]))
            date = make_date(int(ddmmyy[0:2]), int(ddmmyy[2:4]), year, self.date_floor)
            self._ddmmyy_text, self._ddmmyy_date = ddmmyy, self._believable(date, year)
            self._note_rollover(self._ddmmyy_date, year)
        if ddmmyy == self._ddmmyy_text:
            self._set_date(epoch, self._ddmmyy_date)

    def _apply_ZDA(self, epoch: _Epoch, data: list[str]) -> None:
        day, month, year = to_int(data[1]), to_int(data[2]), to_int(data[3])
        if day is None or month is None or year is None or len(data[3]) != 4:
            return
        date = self._believable(make_date(day, month, year, self.date_floor), year)
        self._note_rollover(date, year)
        self._set_date(epoch, date)

    def _believable(self, date: dt.date | None, year: int) -> dt.date | None:
        """DATE, unless the week-rollover rule moved a live receiver's date past the box's own clock while that
        clock is past the floor itself (a true date is never later than tomorrow). A receiver sending a date
        months before this release (a wrong date after a cold start, a recording fed in as live) was moved 1024
        weeks on, to 2045, and the server refused every event as from the future; without a date the agent dates
        events by its clock instead (pipeline: events_clock_dated)."""
        if date is None or self.virtual_clock or date.year - year <= 1:
            return date
        today = dt.datetime.now(dt.UTC).date()
        if today < self.date_floor or date <= today + dt.timedelta(days=1):
            return date
        self.stats.future_dates += 1
        if self.stats.future_dates == 1:
            log.warning("the receiver's date (in %d) would be %s as a GPS week rollover, after this box's clock "
                        "(%s): not used (a receiver set wrong, or a recording fed in as live?)", year, date, today)
        return None

    def _note_rollover(self, date: dt.date | None, year: int) -> None:
        if date is not None and date.year - year > 1:
            self.stats.week_rollovers += 1

    def _apply_GGA(self, epoch: _Epoch, data: list[str]) -> None:
        quality = to_int(data[5])
        self._apply_fix_fields(epoch, data, has_fix=bool(quality), estimated=quality in NOT_MEASURED_QUALITY,
                               hdop_wins=True)
        if quality in RTK_QUALITY:
            epoch.rtk = RTK_QUALITY[quality]

    def _apply_GNS(self, epoch: _Epoch, data: list[str]) -> None:
        modes = set(data[5])
        self._apply_fix_fields(epoch, data, has_fix=bool(modes - {"N"}), estimated=modes <= NOT_MEASURED_FAA | {"N"},
                               hdop_wins=False)
        epoch.rtk = epoch.rtk or RTK_FAA.get(data[5][:1])  # GNS's first mode letter is the GPS system's

    def _apply_fix_fields(self, epoch: _Epoch, data: list[str], has_fix: bool, estimated: bool,
                          hdop_wins: bool) -> None:
        """The fields GGA and GNS share: position (1-4), satellites (6), HDOP (7), altitude (8)."""
        if not has_fix:
            epoch.no_fix = True
        else:
            epoch.seen_fix = True
            epoch.estimated |= estimated
            self._position(epoch, data[1], data[2], data[3], data[4])
            alt = to_float(data[8])
            if alt is not None and -1000.0 < alt < 100000.0:
                epoch.alt = alt
        sats = to_int(data[6])
        if sats is not None and sats < 256:
            epoch.sats = sats
        hdop = dop(data[7])
        if hdop is not None and (hdop_wins or epoch.hdop is None):
            epoch.hdop = hdop

    def _apply_GLL(self, epoch: _Epoch, data: list[str]) -> None:
        if data[5] != "A" or data[6] == "N":
            epoch.no_fix = True
        else:
            epoch.seen_fix = True
            epoch.estimated |= data[6] in NOT_MEASURED_FAA
            epoch.rtk = epoch.rtk or RTK_FAA.get(data[6])
            self._position(epoch, data[0], data[1], data[2], data[3])

    def _apply_GSA(self, epoch: _Epoch, data: list[str]) -> None:
        mode = to_int(data[1])
        if mode in (1, 2, 3):
            epoch.gsa_mode = mode
        hdop = dop(data[15])
        if hdop is not None:
            epoch.gsa_hdop = hdop

    def _apply_VTG(self, epoch: _Epoch, data: list[str]) -> None:
        if data[8] == "N":
            return
        course = track(data[0])
        if course is not None and epoch.track is None:
            epoch.track = course
        if epoch.speed is None:
            kmh = speed_mps(to_float(data[6]), 3.6)
            epoch.speed = kmh if kmh is not None else speed_mps(to_float(data[4]), 1 / KNOT_MPS)

    def _apply_GST(self, epoch: _Epoch, data: list[str]) -> None:
        sigma_lat, sigma_lon = error_sigma(data[5]), error_sigma(data[6])
        if sigma_lat is not None and sigma_lon is not None:
            epoch.sigma_lat, epoch.sigma_lon = sigma_lat, sigma_lon

    # --- output

    def _gsa_values(self, epoch: _Epoch) -> tuple[int | None, float | None]:
        """GSA mode and HDOP for an epoch. DOP and 2D/3D change slowly, so an epoch whose GSA was sent with a
        neighbour (see the module doc) uses the latest GSA of the last few epochs instead of flickering."""
        if epoch.gsa_mode is not None or epoch.gsa_hdop is not None:
            self._gsa_recent = (epoch.gsa_mode, epoch.gsa_hdop, 0)
            return epoch.gsa_mode, epoch.gsa_hdop
        mode, hdop, age = self._gsa_recent
        if age >= _GSA_KEEP_EPOCHS:
            return None, None
        self._gsa_recent = (mode, hdop, age + 1)
        return mode, hdop

    def _finish(self, epoch: _Epoch) -> Fix:
        self.stats.epochs += 1
        utc = None
        if epoch.date is not None:
            utc = dt.datetime.combine(epoch.date, dt.time(), tzinfo=dt.UTC) + dt.timedelta(seconds=epoch.tod)
            if self._last_utc is not None and utc < self._last_utc:
                self.stats.time_backwards += 1
                log.info("GNSS time went backwards (%s -> %s): receiver reset", self._last_utc, utc)
            self._last_utc = utc
        else:
            self.stats.no_date += 1
        gsa_mode, gsa_hdop = self._gsa_values(epoch)
        has_fix = epoch.seen_fix and not epoch.no_fix and epoch.lat is not None
        mode = 0
        if has_fix:
            mode = gsa_mode if gsa_mode in (2, 3) else (3 if epoch.alt is not None else 2)
            self.stats.fixes += 1
        hdop = epoch.hdop if epoch.hdop is not None else gsa_hdop
        eph: float | None
        if epoch.sigma_lat is not None and epoch.sigma_lon is not None:  # GST sets both or neither
            eph = math.hypot(epoch.sigma_lat, epoch.sigma_lon)
        else:
            eph = hdop * RTK_UERE_M.get(epoch.rtk or "", self.uere_m) if hdop is not None else None
        t_mono = epoch.t_arrival
        if self.virtual_clock:
            t_mono = virtual_mono(utc) if utc is not None else math.nan
        return Fix(
            utc=utc, t_mono=t_mono, mode=mode,
            lat=epoch.lat if has_fix else None, lon=epoch.lon if has_fix else None,
            alt_m=epoch.alt if has_fix else None,
            speed_mps=epoch.speed if has_fix else None, track_deg=epoch.track if has_fix else None,
            eph_m=eph if has_fix else None, hdop=hdop, sats=epoch.sats, estimated=has_fix and epoch.estimated,
            rtk=epoch.rtk if has_fix else None,
        )
