"""The uplink's flow control (edge_agent/link/flow.py): RFC 6298's timer with Karn's rule, a window that
grows per ack and halves per timeout, worked through by hand; then, against the real broker, a server slower
than the ack timeout gets far fewer copies from an adaptive uplink than from a fixed one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge_agent.config.outbox import OutboxConfig
from edge_agent.health import HealthBoard
from edge_agent.link.flow import MIN_WINDOW, FlowControl
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from tests.ack_server import AckServer
from tests.test_uplink import confirmed, fill, login, uplink_cfg, wait_for


def test_the_timeout_follows_the_smoothed_latency_and_its_deviation() -> None:
    flow = FlowControl(max_window=1000, min_timeout_s=1.0, max_timeout_s=600.0)
    assert flow.timeout_s == 1.0                       # no sample yet: the configured minimum
    flow.on_ack(2.0)                                   # first sample: srtt 2, rttvar 1
    assert (flow.srtt, flow.rttvar, flow.timeout_s) == (2.0, 1.0, 6.0)
    flow.on_ack(4.0)                                   # rttvar 0.75*1 + 0.25*2 = 1.25; srtt 0.875*2 + 0.125*4
    assert (flow.srtt, flow.rttvar) == (2.25, 1.25) and flow.timeout_s == pytest.approx(7.25)
    slow = FlowControl(max_window=1000, min_timeout_s=60.0, max_timeout_s=600.0)
    slow.on_ack(2.0)
    assert slow.timeout_s == 60.0                      # never below ack_timeout_s


def test_timeouts_double_the_wait_until_a_clean_sample_and_karn_ignores_copies() -> None:
    flow = FlowControl(max_window=1000, min_timeout_s=10.0, max_timeout_s=45.0)
    flow.on_timeout()
    flow.on_timeout()
    assert flow.timeout_s == 40.0
    flow.on_timeout()
    assert flow.timeout_s == 45.0                      # capped at ack_timeout_max_s
    flow.on_ack(None)                                  # a re-sent row's ack: no sample, the backoff stays
    assert flow.timeout_s == 45.0 and flow.srtt is None
    flow.on_ack(3.0)                                   # a row sent once: sample taken, backoff reset
    assert flow.timeout_s == 10.0 and flow.srtt == 3.0
    for _ in range(5):                                 # an hour out of coverage...
        flow.on_timeout()
    flow.on_reconnect()                                # ...says nothing about the server once back
    assert flow.timeout_s == 10.0 and flow.window == 4  # the window stays halved: it grows back with acks


def test_the_window_doubles_per_round_trip_then_grows_by_one_and_halves_on_a_timeout() -> None:
    flow = FlowControl(max_window=1000, min_timeout_s=1.0, max_timeout_s=60.0, initial_window=8)
    assert flow.window == 8
    for _ in range(8):                                 # one round trip of acks
        flow.on_ack(0.1)
    assert flow.window == 16
    flow.on_timeout()                                  # halve; from here on one row per round trip
    assert flow.window == 8
    for _ in range(8):
        flow.on_ack(0.1)
    assert flow.window == 8                            # 8 + 8 * (1/8..) stays just under 9
    flow.on_ack(0.1)
    assert flow.window == 9
    for _ in range(10):
        flow.on_timeout()
    assert flow.window == MIN_WINDOW                   # never closed completely
    capped = FlowControl(max_window=5, min_timeout_s=1.0, max_timeout_s=60.0)
    assert capped.window == 5                          # the configured window bounds the start too
    for _ in range(50):
        capped.on_ack(0.1)
    assert capped.window == 5
    assert FlowControl(max_window=1000, min_timeout_s=1.0, max_timeout_s=60.0).window == 10  # TCP's IW10
    fixed = FlowControl(max_window=20, min_timeout_s=5.0, max_timeout_s=60.0, initial_window=4, adaptive=False)
    fixed.on_timeout()
    fixed.on_ack(30.0)
    assert (fixed.window, fixed.timeout_s) == (20, 5.0)  # uplink.adaptive = false: the old fixed rules


EVENTS = 40  # two windows' worth and some: 60 took 13 s a run


def copies_against_a_slow_server(service_info, device: str, password: str, tmp_path: Path,
                                 **flow) -> tuple[int, int, dict]:
    """(distinct events, deliveries, flow snapshot) for EVENTS events through a server that acks 2 s late while
    the uplink's shortest ack timeout is 0.5 s."""
    server = AckServer("127.0.0.1", service_info.mqtt_port, service_info.server_user, service_info.server_password,
                       client_id=f"ack-{device}", devices=[device], ack_after_s=2.0).start()
    outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(synchronous="NORMAL"))
    fill(outbox, EVENTS)
    uplink = Uplink(uplink_cfg(service_info.mqtt_port, login(tmp_path, password), window=20, batch=20,
                               ack_timeout_s=0.5, **flow), device, outbox, HealthBoard())
    try:
        uplink.start()
        wait_for(lambda: confirmed(outbox) == EVENTS, 60, f"all {EVENTS} confirmed")
        return server.distinct, server.total, uplink.snapshot()["flow"]
    finally:
        uplink.stop()
        server.stop()
        outbox.close()


@pytest.mark.services
def test_a_server_slower_than_the_timeout_gets_few_copies(service_info, mqtt_device, tmp_path: Path) -> None:
    # The two uplinks run side by side (own device, own ack server, own outbox): each run is mostly waiting for the
    # server's late acks, and one after the other took twice the wall time for the same two measurements. The
    # logins are added first, one at a time (each rewrites the broker's password file).
    fixed_login, adaptive_login = mqtt_device(), mqtt_device()
    with ThreadPoolExecutor(2) as pool:
        fixed_run = pool.submit(copies_against_a_slow_server, service_info, *fixed_login, tmp_path / "fixed",
                                adaptive=False)
        adaptive_run = pool.submit(copies_against_a_slow_server, service_info, *adaptive_login, tmp_path / "adaptive")
        fixed, adaptive = fixed_run.result(), adaptive_run.result()
    assert fixed[0] == adaptive[0] == EVENTS            # nothing lost either way
    fixed_copies, adaptive_copies = fixed[1] - EVENTS, adaptive[1] - EVENTS
    # Fixed: a row goes out again every 0.5 s until its ack 2 s later, as far as the window of 20 lets it.
    assert fixed_copies >= EVENTS, (fixed, adaptive)
    assert adaptive_copies <= fixed_copies / 2, (fixed, adaptive)  # measured 21 against 80-100 with 60 events
    assert adaptive[2]["ack_timeout_s"] >= 2.0         # it learned the server's pace


def test_one_outage_backs_off_once_however_many_sweeps_find_its_rows_overdue() -> None:
    # The uplink sweeps for overdue rows every second; rows of one round, published over a few seconds, expire in
    # several sweeps. Each sweep doubled the wait: a minute's server outage took it from 40 s to 1800 s in 17 s.
    flow = FlowControl(max_window=1000, min_timeout_s=20.0, max_timeout_s=1800.0)
    for sweep in range(10):            # rows sent at t = 0..9 s, each found overdue one sweep after the other
        flow.on_timeout(newest_sent_s=float(sweep), now_s=20.0 + sweep)
    assert flow.timeout_s == 40.0 and flow.window == MIN_WINDOW + 1   # one back-off: 10 -> 5 rows, 20 -> 40 s
    flow.on_timeout(newest_sent_s=25.0, now_s=70.0)  # a row re-sent after that back-off expired too: the next one
    assert flow.timeout_s == 80.0
    flow.on_timeout()                  # callers that do not say when rows were sent back off every time
    assert flow.timeout_s == 160.0
    assert flow.timeouts == 12
