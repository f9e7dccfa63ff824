"""The vehicle's motion between frames (edge_agent.gnss.motion), as the tracker is told it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edge_agent.gnss.motion import VehicleMotion

FPS = 15.0


@dataclass(frozen=True)
class P:
    speed_mps: float
    heading_deg: float
    state: str = "ok"


def test_the_turn_rate_is_the_heading_change_over_the_last_second() -> None:
    motion = VehicleMotion(1.0)
    yaws = [motion.step(k / FPS, P(10.0, 2.0 * (k // FPS)))[1].yaw_deg for k in range(int(3 * FPS))]
    assert sum(yaws[int(FPS):]) == pytest.approx(4.0, abs=0.3)  # 2 degrees per second for the last 2 s
    assert all(abs(y) < 0.3 for y in yaws)  # spread over the frames, not a step at each fix


def test_a_gap_neither_turns_nor_spikes_and_is_flagged() -> None:
    """Through 4 s without fixes the filter coasts on a frozen heading; the first fix after it turns the heading
    by the whole 20° curve at once. The tracker must not be told the vehicle turned 20° within one second (it
    split tracks after tunnels), and it is told the motion is a guess while the filter coasts."""
    motion = VehicleMotion(1.0)
    told = []
    for k in range(int(8 * FPS)):
        t = k / FPS
        pose = P(10.0, 0.0) if t < 2 else P(10.0, 0.0, "predicting") if t < 6 else P(10.0, 20.0)
        told.append(motion.step(t, pose)[1])
    gap, after = told[int(3 * FPS) + 1:int(6 * FPS)], told[int(6 * FPS):]
    assert all(m.coasting for m in gap) and not any(m.coasting for m in after)
    assert not any(m.coasting for m in told[:int(3 * FPS)])  # the first second of a gap may be a slow receiver
    assert all(m.yaw_deg == 0.0 for m in gap)
    assert sum(m.yaw_deg for m in after) == pytest.approx(0.0, abs=0.5)
    assert all(m.forward_m == pytest.approx(10.0 / FPS) for m in told[1:])


def test_a_half_hertz_receiver_is_not_a_gap() -> None:
    """At 0.5 Hz every fix is followed by 0.5 s of 'predicting' (ok_window_s is 1.5 s): that is no gap, and the
    turn rate (2 degrees per second, stepping at each fix) is still told."""
    motion = VehicleMotion(1.0)
    told = []
    for k in range(int(10 * FPS)):
        t = k / FPS
        since_fix = t % 2.0
        told.append(motion.step(t, P(10.0, 2.0 * (t - since_fix), "ok" if since_fix <= 1.5 else "predicting"))[1])
    assert not any(m.coasting for m in told)
    assert sum(m.yaw_deg for m in told) == pytest.approx(16.0, abs=2.5)  # 2°/s from the first step at 2 s
