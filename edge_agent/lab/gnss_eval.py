"""How well the position filter and its smoother place a real recorded drive with receiver error added.

The truth is the recorded track itself (its positions at each fix); each fix's position gets a simulated
receiver error (edge_agent.lab.sim.gnss_noise: `white` or `drift`, SIGMA per axis) while its speed, course, HDOP
and timing stay as recorded. The drive can be thinned (`min_step_s`) to a slower receiver. Three positions
are scored against the truth at every fix: the noisy fix (raw), the filter's pose right after the fix
(filtered), and `position_at(fix time)` asked `lag_s` later, when the fixes after it are known (smoothed), as
the pipeline asks when it places a defect seen a few seconds before.

Calibration: the share of filtered (smoothed) errors within 2 x h_std_m. h_std_m is the 2-D RMS (DRMS), so for
a Gaussian error that the filter's covariance describes exactly it is 1 - exp(-4) ~ 0.98 for circular errors
and ~0.95 for a thin ellipse (within 1 x h_std_m: 0.63 and 0.68); far less means the filter is overconfident,
far more that it claims more error than there is. Per axis the 1-sigma is h_std_m / sqrt 2; within 2 of those
(2-D) lies 1 - exp(-2) ~ 0.86 of a circular Gaussian error (`filtered_within_2sigma`), the band a per-axis
figure such as a GST's sigmas is judged by.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np

from edge_agent.config.gnss import GnssConfig
from edge_agent.gnss.epochs import Fix, fix_position
from edge_agent.gnss.kalman import LocalFrame, Pose, PositionFilter
from edge_agent.gnss.source import fixes_from_file
from edge_agent.lab.sim.gnss_noise import NoiseModel, gnss_errors

SMOOTHING_LAG_S = 5.0  # an event is written a few seconds after the frames that placed the defect


@dataclass(frozen=True)
class CaseResult:
    fixes: int
    raw_rms_m: float
    raw_p95_m: float
    filtered_rms_m: float
    filtered_p95_m: float
    smoothed_rms_m: float
    smoothed_p95_m: float
    filtered_within_2h: float  # share of filtered errors within 2 x h_std_m
    smoothed_within_2h: float
    filtered_within_1h: float  # share within 1 x h_std_m (1 - exp(-1) ~ 0.63 for a circular Gaussian)
    filtered_within_2sigma: float  # share within 2 per-axis sigmas, 2 x h_std_m / sqrt 2 (~0.86)

    @property
    def filtered_ratio(self) -> float:
        return self.filtered_rms_m / self.raw_rms_m

    @property
    def smoothed_ratio(self) -> float:
        return self.smoothed_rms_m / self.raw_rms_m


def recorded_fixes(path: str | Path, cfg: GnssConfig | None = None) -> list[Fix]:
    """Every epoch of a recording on its virtual clock (fixes, no-fix epochs and dead reckoning alike)."""
    return list(fixes_from_file(path, cfg))


def is_measurement(fix: Fix) -> bool:
    """A fix the filter takes as a position measurement (and the evaluation scores)."""
    return fix.mode > 0 and fix.lat is not None and fix.lon is not None and not fix.estimated


def thinned(fixes: Sequence[Fix], min_step_s: float) -> list[Fix]:
    """The epochs at least MIN_STEP_S apart (a slower receiver on the same drive); 0 keeps all."""
    out: list[Fix] = []
    for fix in fixes:
        if not out or fix.t_mono - out[-1].t_mono >= min_step_s - 1e-6:
            out.append(fix)
    return out


def with_error(fixes: Sequence[Fix], sigma_m: float, model: NoiseModel, seed: int = 1,
               stated: bool = True) -> list[Fix]:
    """FIXES with a simulated receiver error of SIGMA_M per axis added to each position. With STATED the
    receiver states that error (eph_m = SIGMA_M x sqrt 2, as a GST would), whatever part of it wanders;
    without, its recorded HDOP x UERE stands. Speed, course and timing stay as recorded."""
    times = np.array([f.t_mono for f in fixes], dtype=float)
    err = gnss_errors(np.random.default_rng(seed), times, sigma_m * math.sqrt(2.0), model)
    out = []
    for k, fix in enumerate(fixes):
        if not is_measurement(fix):
            out.append(fix)
            continue
        frame = LocalFrame(*fix_position(fix))
        lat, lon = frame.to_geodetic(float(err.east_m[k]), float(err.north_m[k]))
        eph = sigma_m * math.sqrt(2.0) if stated else fix.eph_m
        out.append(dataclasses.replace(fix, lat=lat, lon=lon, eph_m=eph))
    return out


def evaluate(truth: Sequence[Fix], noisy: Sequence[Fix], cfg: GnssConfig | None = None,
             lag_s: float = SMOOTHING_LAG_S) -> CaseResult:
    """Score the filter (and, with cfg.smooth, the smoother) on NOISY against TRUTH, epoch by epoch."""
    pf = PositionFilter(cfg)
    raw: list[float] = []
    filtered: list[float] = []
    filtered_h: list[float] = []
    smoothed: list[float] = []
    smoothed_h: list[float] = []
    pending: deque[Fix] = deque()  # truth of fixes whose smoothed position is asked once lag_s has passed

    def ask(fix: Fix) -> None:
        pose = pf.position_at(fix.t_mono)
        if pose is not None:
            smoothed.append(_error_m(fix, pose.lat, pose.lon))
            smoothed_h.append(pose.h_std_m)

    for true, fix in zip(truth, noisy, strict=True):
        pose = pf.update(fix)
        while pending and pending[0].t_mono <= fix.t_mono - lag_s:
            ask(pending.popleft())
        if not is_measurement(fix) or pose is None:
            continue
        raw.append(_error_m(true, *fix_position(fix)))
        filtered.append(_error_m(true, pose.lat, pose.lon))
        filtered_h.append(pose.h_std_m)
        pending.append(true)
    while pending:
        ask(pending.popleft())
    return CaseResult(len(raw), _rms(raw), _p95(raw), _rms(filtered), _p95(filtered), _rms(smoothed),
                      _p95(smoothed), _within(filtered, filtered_h), _within(smoothed, smoothed_h),
                      _within(filtered, filtered_h, 1.0), _within(filtered, filtered_h, math.sqrt(2.0)))


def _error_m(true: Fix, lat: float, lon: float) -> float:
    return math.hypot(*LocalFrame(*fix_position(true)).to_enu(lat, lon))


def _rms(errors: Sequence[float]) -> float:
    return float(np.sqrt(np.mean(np.square(errors)))) if errors else math.nan


def _p95(errors: Sequence[float]) -> float:
    return float(np.percentile(errors, 95)) if errors else math.nan


def _within(errors: Sequence[float], h_std: Sequence[float], k: float = 2.0) -> float:
    if not errors:
        return math.nan
    return float(np.mean(np.asarray(errors) <= k * np.asarray(h_std)))


@dataclass(frozen=True)
class GapResult:
    """Positions inside cut-out GNSS gaps, asked as a track ending in the gap asks (ASK_AFTER_S later, no fix
    since: dead reckoning out of the gap's entry) and after the first fix past the gap (what the pipeline's
    hold waits for). Placed: not stale and h_std within the pipeline's limit."""

    points: int
    at_once_placed: float
    at_once_median_m: float
    held_placed: float
    held_median_m: float
    held_within_2h: float


def evaluate_gaps(truth: Sequence[Fix], noisy: Sequence[Fix], gap_s: float, every_s: float = 60.0,
                  cfg: GnssConfig | None = None, max_h_std_m: float = 25.0, ask_after_s: float = 1.0) -> GapResult:
    """Cut GAP_S without fixes out of NOISY every EVERY_S and score the positions of the recorded track inside
    the gaps against TRUTH (see GapResult)."""
    pf = PositionFilter(cfg)
    start = noisy[0].t_mono
    at_once: list[tuple[float, Fix]] = []  # (when asked, truth)
    held: list[Fix] = []
    once_err: list[float] = []
    held_err: list[float] = []
    held_h: list[float] = []
    points = 0

    def placed(pose: Pose | None) -> TypeGuard[Pose]:
        return pose is not None and pose.state != "stale" and pose.h_std_m <= max_h_std_m

    for true, fix in zip(truth, noisy, strict=True):
        into = (fix.t_mono - start) % every_s
        if is_measurement(fix) and every_s / 2 <= into < every_s / 2 + gap_s:
            points += 1
            at_once.append((fix.t_mono + ask_after_s, true))
            held.append(true)
            continue
        while at_once and at_once[0][0] < fix.t_mono:  # asked before this fix arrives (in time order)
            gap_truth = at_once.pop(0)[1]
            if placed(pose := pf.position_at(gap_truth.t_mono)):
                once_err.append(_error_m(gap_truth, pose.lat, pose.lon))
        pf.update(fix)
        if held and is_measurement(fix):
            for gap_truth in held:
                if placed(pose := pf.position_at(gap_truth.t_mono)):
                    held_err.append(_error_m(gap_truth, pose.lat, pose.lon))
                    held_h.append(pose.h_std_m)
            held = []
    share = 1.0 / points if points else math.nan
    return GapResult(points, len(once_err) * share, _median(once_err), len(held_err) * share, _median(held_err),
                     _within(held_err, held_h))


def _median(errors: Sequence[float]) -> float:
    return float(np.median(errors)) if errors else math.nan
