"""A vehicle's GNSS position error over a drive: the receiver's drift model, smoothed as the agent's filter does.

The receiver error comes from edge_agent.lab.sim.gnss_noise (the same drift model the rendered drives use: 75 % of
the variance a Gauss-Markov wander with a 45 s time constant, the rest white). The agent's Kalman filter and its
combination of a defect's views remove most of the white part and none of the wander; a centred 5 s mean stands
for that here (docs/pipeline.md: at 3 m RMS the raw median error is 2.5 m and 2.2 m after averaging 5 s).
"""

from __future__ import annotations

import numpy as np

from edge_agent.lab.sim.gnss_noise import gnss_errors

SMOOTH_S = 5


class ErrorTrack:
    """East/north error (metres) at any time between T0 and T1 (simulated seconds), sampled at 1 Hz."""

    def __init__(self, rng: np.random.Generator, t0: float, t1: float, sigma_m: float, model: str = "drift") -> None:
        self.t0 = float(np.floor(t0)) - SMOOTH_S
        times = np.arange(self.t0, t1 + SMOOTH_S + 2.0, 1.0)
        err = gnss_errors(rng, times, sigma_m, model)  # type: ignore[arg-type]
        kernel = np.ones(SMOOTH_S) / SMOOTH_S
        self.east = np.convolve(err.east_m, kernel, mode="same")
        self.north = np.convolve(err.north_m, kernel, mode="same")

    def at(self, t: float) -> tuple[float, float]:
        i = int(np.clip(round(t - self.t0), 0, len(self.east) - 1))
        return float(self.east[i]), float(self.north[i])
