"""How much the uplink keeps in flight and how long it waits for the server's ack, adapted to the server.

A fixed window and a fixed ack timeout turn a slow server into a re-send storm: when every vehicle of a fleet
comes back from the depot at once, the server may need minutes to store what is queued, every row it has not
confirmed within the timeout is sent again, and the copies queue behind the originals. So, as TCP does:

- the ack timeout follows the measured time from publish to the server's ack (RFC 6298: smoothed latency
  plus four deviations, never below `ack_timeout_s`), and doubles after each timeout until an ack for a row
  sent once arrives (Karn's rule: a re-sent row's latency says nothing about either copy);
- the window starts small and grows by one row per ack (doubling per round trip) up to `window`, then by one
  row per round trip; a timeout halves it. A backlogged server thus sees each vehicle's share shrink instead
  of a wave of copies.

Times are monotonic seconds passed in by the caller, so the rules are tested without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

ALPHA, BETA = 1 / 8, 1 / 4   # RFC 6298's gains for the smoothed latency and its deviation
MIN_WINDOW = 4               # a timeout never closes the window below this (the link must keep probing)


@dataclass
class FlowControl:
    max_window: int
    min_timeout_s: float
    max_timeout_s: float
    initial_window: int = 10  # TCP's initial window (RFC 6928): a fleet-wide storm starts with 10 per vehicle
    adaptive: bool = True  # False: a fixed window of max_window and a fixed timeout of min_timeout_s

    def __post_init__(self) -> None:
        self._window = float(min(self.max_window, self.initial_window if self.adaptive else self.max_window))
        self._threshold = float(self.max_window)  # slow start until here
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.backoff = 1
        self.timeouts = 0
        self._backed_off_at: float | None = None  # when the last timeout halved the window, doubled the wait

    @property
    def window(self) -> int:
        return max(1, int(self._window))

    @property
    def timeout_s(self) -> float:
        if not self.adaptive:
            return self.min_timeout_s
        base = self.min_timeout_s if self.srtt is None else max(self.min_timeout_s, self.srtt + 4 * self.rttvar)
        return min(self.max_timeout_s, base * self.backoff)

    def on_ack(self, latency_s: float | None) -> None:
        """One row confirmed by the server; LATENCY_S since it was published, or None for a re-sent row."""
        if not self.adaptive:
            return
        if latency_s is not None and latency_s >= 0:
            if self.srtt is None:
                self.srtt, self.rttvar = latency_s, latency_s / 2
            else:
                self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - latency_s)
                self.srtt = (1 - ALPHA) * self.srtt + ALPHA * latency_s
            self.backoff = 1
        step = 1.0 if self._window < self._threshold else 1.0 / self._window
        self._window = min(float(self.max_window), self._window + step)

    def on_timeout(self, newest_sent_s: float | None = None, now_s: float | None = None) -> None:
        """Rows went unconfirmed past the timeout, the newest of them published at NEWEST_SENT_S (call once per
        expiry round, not per row). Rows published before the last back-off were answered by it: one back-off
        per round of sending, as TCP backs off once per expired timer (RFC 6298 5.5). Sweeps a second apart each
        finding a few rows of one outage's round overdue doubled the wait six times in 17 s (40 s -> 1800 s),
        and rows waited half an hour after a minute's outage of the server."""
        self.timeouts += 1
        if not self.adaptive:
            return
        if newest_sent_s is not None and self._backed_off_at is not None and newest_sent_s < self._backed_off_at:
            return
        self._backed_off_at = now_s
        self._threshold = max(float(MIN_WINDOW), self._window / 2)
        self._window = min(self._window, self._threshold)
        self.backoff = min(self.backoff * 2, 1024)  # timeout_s stops at max_timeout_s anyway

    def on_reconnect(self) -> None:
        """A new connection: the timeouts before it measured the lost link, not the server. Without this, a van
        back in coverage after an hour waits out a timeout doubled for every round it was away (up to the cap)
        before re-sending a row whose copy the broker lost."""
        self.backoff = 1

    def snapshot(self) -> dict[str, float | int | None]:
        return {"window": self.window, "ack_timeout_s": round(self.timeout_s, 2), "backed_off": self.backoff > 1,
                "ack_latency_s": None if self.srtt is None else round(self.srtt, 3), "timeouts": self.timeouts}
