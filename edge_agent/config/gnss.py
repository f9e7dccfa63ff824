"""GNSS reader and position filter settings (used by nmea.py, epochs.py, kalman.py and gnss_source.py)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from roadmon_contract.config_base import Section

# A live receiver's date before this release is a GPS week rollover: an old receiver's 1024-week window passed,
# and it said 2007 in 2026 (every event refused as too old, and doctor blamed the box's clock). Never later than
# the release itself: a true date before the floor would be moved 1024 weeks into the future.
LIVE_DATE_FLOOR = dt.date(2026, 11, 1)
RECORDED_DATE_FLOOR = dt.date(2000, 1, 1)


class GnssConfig(Section):
    # --- where NMEA comes from
    source: Literal["serial", "file", "stdin", "gpsd"] = Field(
        "serial", description="Where NMEA comes from: serial, file (a recording), stdin, or gpsd (its JSON stream)")
    port: str = Field("/dev/ttyACM0", description="Serial device of the receiver (source=serial); a relative "
                                                    "path is taken beside the config file")
    baud: int = Field(9600, gt=0, description="Serial baud rate (source=serial)")
    file: str = Field("", description="NMEA recording to replay (source=file); a relative path is taken "
                                      "beside the config file")
    realtime: bool = Field(True, description="Replay a file at the pace of its UTC times (source=file)")
    gpsd_host: str = Field("127.0.0.1", description="gpsd host (source=gpsd)")
    gpsd_port: int = Field(2947, gt=0, lt=65536, description="gpsd TCP port (source=gpsd)")
    reconnect_min_s: float = Field(0.5, gt=0, description="First wait before reopening a lost port or connection")
    reconnect_max_s: float = Field(10.0, gt=0, description="Longest wait between reopen attempts (backoff doubles)")
    no_data_timeout_s: float = Field(
        5.0, gt=0, description="An open port that yields no bytes for this long is treated as lost and reopened")
    # --- parsing and epochs
    max_sentence_chars: int = Field(
        160, ge=82, le=4096,
        description="Longest accepted sentence from '$' to checksum; NMEA says 82 but receivers send longer ones")
    date_floor: dt.date | Literal["auto"] = Field(
        "auto",
        description="Dates before this are a GPS week rollover (1024 weeks are added until they are not); auto: "
                    f"{LIVE_DATE_FLOOR} (this release) for a live receiver, which cannot be living before it, and "
                    f"{RECORDED_DATE_FLOOR} for recordings, which may be old")
    epoch_idle_s: float = Field(
        0.25, gt=0, description="Live sources: an epoch is complete when no sentence arrived for this long")
    receiver_latency_s: float = Field(
        0.1, ge=0, le=2.0,
        description="Delay between a fix's UTC and its first sentence arriving; fixes are stamped "
                    "time.monotonic() minus this")
    uere_m: float = Field(
        4.0, gt=0, description="User equivalent range error: horizontal error = HDOP x this when no GST is sent")
    # --- Kalman filter
    process_accel_mps2: float = Field(
        1.5, gt=0, description="Process noise: standard deviation of the vehicle's unmodelled acceleration (with the "
                               "receiver's velocity measured, turns and braking show up there, so this stays small)")
    coast_accel_mps2: float = Field(
        3.0, gt=0, description="Process noise for the uncertainty of a position predicted past the last fix (a "
                               "tunnel): over seconds without fixes the vehicle's manoeuvres are not measured")
    use_receiver_velocity: bool = Field(
        True, description="Feed the receiver's speed and track (Doppler) to the filter as a velocity measurement")
    velocity_sigma_mps: float = Field(
        0.5, gt=0, description="Standard deviation of the receiver's speed over ground, per axis")
    adapt_fix_noise: bool = Field(
        True, description="Scale the receiver's own position error figures (GST, HDOP x uere_m) by how far its fixes "
                          "really scatter around the path its velocity traces (needs use_receiver_velocity)")
    fix_noise_window: int = Field(
        60, ge=2, description="Fixes the position noise scale averages over (adapt_fix_noise)")
    smooth: bool = Field(
        True, description="position_at(t) for a time in the past also uses the fixes after it (a Rauch-Tung-Striebel "
                          "smoother over the filter's history, so at most history_s back)")
    gate_chi2: float = Field(
        18.4, gt=0,
        description="Mahalanobis gate (chi-square, 2 degrees of freedom; 18.4 = 99.99 %): fixes beyond are outliers")
    max_rejections: int = Field(
        2, ge=1, description="This many outliers in a row mean the filter is wrong, not the receiver: reset (a "
                             "receiver whose solution jumps and stays is followed after this many fixes)")
    reset_jump_m: float = Field(100.0, gt=0, description="A fix this far from the prediction resets the filter")
    reset_gap_s: float = Field(10.0, gt=0, description="A gap without fixes longer than this resets the filter")
    stale_after_s: float = Field(
        10.0, gt=0, description="Predicting without fixes for longer than this makes the position 'stale'")
    ok_window_s: float = Field(
        1.5, gt=0, description="A position within this long after a fix is 'ok'; later ones are 'predicting'")
    heading_min_speed_mps: float = Field(
        1.0, ge=0, description="Heading is reported only above this speed (below it, motion gives no direction)")
    reanchor_m: float = Field(
        5000.0, gt=0, description="Move the filter's local ENU frame when the vehicle is this far from its origin")
    history_s: float = Field(
        120.0, gt=0, description="How far back position_at can look (filtered states kept for interpolation)")

    def date_floor_for(self, live: bool) -> dt.date:
        """The rollover floor for a live receiver or a recording (see date_floor)."""
        if isinstance(self.date_floor, dt.date):
            return self.date_floor
        return LIVE_DATE_FLOOR if live else RECORDED_DATE_FLOOR
