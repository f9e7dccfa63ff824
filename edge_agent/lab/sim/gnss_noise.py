"""Simulated receiver position noise, in one of two models, with HDOP and satellite counts that change slowly.

- `white`: an independent Gaussian error each epoch. This is the synthetic receiver the GNSS and perception
  issues define their accuracy targets on ("Gaussian noise sigma 3 m at 1 Hz"); a filter and the combination
  of a defect's views can average it down.
- `drift`: what a real receiver does: most of the error (CORRELATED_SHARE of the variance) is a slowly
  wandering bias (first-order Gauss-Markov with CORRELATION_S, as multipath and atmosphere drift), the rest
  is white jitter. Over the seconds a defect is in view the bias is a near-constant offset that no pipeline
  removes from one pass; the fleet server's aggregation of many passes does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeGuard, get_args

import numpy as np

NoiseModel = Literal["white", "drift"]
NOISE_MODELS: tuple[str, ...] = get_args(NoiseModel)
CORRELATION_S = 45.0     # drift: time constant of the wandering part
CORRELATED_SHARE = 0.75  # drift: share of the variance that wanders; the rest is white


def is_noise_model(name: str) -> TypeGuard[NoiseModel]:
    """Whether NAME (from a command line, say) names one of the noise models."""
    return name in NOISE_MODELS


@dataclass
class GnssErrors:
    east_m: np.ndarray
    north_m: np.ndarray
    hdop: np.ndarray
    sats: np.ndarray
    speed_err_mps: np.ndarray
    alt_err_m: np.ndarray


def gnss_errors(rng: np.random.Generator, times: np.ndarray, horizontal_sigma_m: float,
                model: NoiseModel = "white") -> GnssErrors:
    """Errors at the given epoch times (seconds, increasing). `horizontal_sigma_m` is the horizontal RMS error
    (the usual "3 m accuracy" of a receiver): each of east and north gets horizontal_sigma_m / sqrt(2), either
    independent per epoch (`white`) or CORRELATED_SHARE of the variance wandering with CORRELATION_S and the
    rest white (`drift`)."""
    if model not in NOISE_MODELS:
        raise ValueError(f"GNSS noise model {model!r}: expected one of {', '.join(NOISE_MODELS)}")
    n = len(times)
    dts = np.diff(times, prepend=times[0])
    axis_sigma = horizontal_sigma_m / math.sqrt(2)

    def wander(scale: float, tau: float) -> np.ndarray:
        out = np.empty(n)
        x = rng.normal(0, scale)
        for i in range(n):
            a = math.exp(-dts[i] / tau)
            x = a * x + math.sqrt(1 - a * a) * rng.normal(0, scale)
            out[i] = x
        return out

    if model == "drift":
        sig_c = axis_sigma * math.sqrt(CORRELATED_SHARE)
        sig_w = axis_sigma * math.sqrt(1 - CORRELATED_SHARE)
        east = wander(sig_c, CORRELATION_S) + rng.normal(0, sig_w, n)
        north = wander(sig_c, CORRELATION_S) + rng.normal(0, sig_w, n)
    else:
        east = rng.normal(0, axis_sigma, n)
        north = rng.normal(0, axis_sigma, n)
    hdop = np.clip(0.9 + np.abs(wander(0.35, 90.0)), 0.6, 3.0)
    sats = np.clip(np.round(12 - 2.5 * (hdop - 0.9) + wander(1.0, 120.0)), 5, 16).astype(int)
    return GnssErrors(east, north, hdop, sats, rng.normal(0, 0.08, n), wander(axis_sigma * 1.5, 60.0))
