"""Receiver-like position noise: a slowly wandering bias (first-order Gauss-Markov, as multipath and
atmosphere drift) plus white jitter, with HDOP and satellite counts that change slowly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CORRELATION_S = 45.0     # time constant of the wandering part
CORRELATED_SHARE = 0.75  # of the variance; the rest is white


@dataclass
class GnssErrors:
    east_m: np.ndarray
    north_m: np.ndarray
    hdop: np.ndarray
    sats: np.ndarray
    speed_err_mps: np.ndarray
    alt_err_m: np.ndarray


def gnss_errors(rng: np.random.Generator, times: np.ndarray, horizontal_sigma_m: float) -> GnssErrors:
    """Errors at the given epoch times (seconds, increasing). `horizontal_sigma_m` is the horizontal RMS error
    (the usual "3 m accuracy" of a receiver): each of east and north gets horizontal_sigma_m / sqrt(2), of which
    CORRELATED_SHARE of the variance wanders with CORRELATION_S and the rest is white."""
    n = len(times)
    dts = np.diff(times, prepend=times[0])
    axis_sigma = horizontal_sigma_m / math.sqrt(2)
    sig_c = axis_sigma * math.sqrt(CORRELATED_SHARE)
    sig_w = axis_sigma * math.sqrt(1 - CORRELATED_SHARE)

    def wander(scale: float, tau: float) -> np.ndarray:
        out = np.empty(n)
        x = rng.normal(0, scale)
        for i in range(n):
            a = math.exp(-dts[i] / tau)
            x = a * x + math.sqrt(1 - a * a) * rng.normal(0, scale)
            out[i] = x
        return out

    east = wander(sig_c, CORRELATION_S) + rng.normal(0, sig_w, n)
    north = wander(sig_c, CORRELATION_S) + rng.normal(0, sig_w, n)
    hdop = np.clip(0.9 + np.abs(wander(0.35, 90.0)), 0.6, 3.0)
    sats = np.clip(np.round(12 - 2.5 * (hdop - 0.9) + wander(1.0, 120.0)), 5, 16).astype(int)
    return GnssErrors(east, north, hdop, sats, rng.normal(0, 0.08, n), wander(axis_sigma * 1.5, 60.0))
