"""The agent's outbox semantics, in memory: a message stays until the SERVER acks it, and is sent again when
no ack came in time. Window and ack timeout are the agent's own flow control (edge_agent/link/flow.py), so
a simulated fleet reconnecting at once loads the server as real agents would. A rejection in the ack (the
server will never take it) also ends a message."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

from edge_agent.link.flow import FlowControl


@dataclass
class _Row:
    kind: str
    body: bytes
    sent_at: float | None = None   # monotonic seconds of the last send
    sends: int = 0


class Outbox:
    def __init__(self, flow: FlowControl | None = None) -> None:
        """FLOW: the agent's defaults unless given (uplink.window 1000, ack_timeout_s 60, adaptive)."""
        self.flow = flow or FlowControl(max_window=1000, min_timeout_s=60.0, max_timeout_s=1800.0)
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()
        self.confirmed = 0
        self.rejected = 0
        self.resent = 0
        self.latencies: list[float] = []  # seconds from publish to ack, of messages acked after their first send

    def add(self, kind: str, msg_id: str, payload: dict) -> None:
        with self._lock:
            self._rows[msg_id] = _Row(kind, json.dumps(payload, separators=(",", ":")).encode())

    def due(self, now: float) -> list[tuple[str, str, bytes]]:
        """(id, kind, body) to send now, marked sent: never sent, or unconfirmed past the timeout, within the
        window of messages in flight."""
        out = []
        with self._lock:
            timeout = self.flow.timeout_s
            overdue = [r for r in self._rows.values() if r.sent_at is not None and now - r.sent_at >= timeout]
            if overdue:
                self.flow.on_timeout(max(r.sent_at for r in overdue), now)
                for r in overdue:
                    r.sent_at = -1.0  # due again; no longer in flight
            in_flight = sum(1 for r in self._rows.values() if r.sent_at is not None and r.sent_at >= 0)
            for msg_id, r in self._rows.items():
                if in_flight + len(out) >= self.flow.window:
                    break
                if r.sent_at is None or r.sent_at < 0:
                    if r.sent_at is not None:
                        self.resent += 1
                    r.sent_at, r.sends = now, r.sends + 1
                    out.append((msg_id, r.kind, r.body))
        return out

    def ack(self, message: dict, now: float | None = None) -> None:
        """Apply a server ack {event_ids, coverage_ids, rejected: [{id, reason}]} that arrived at NOW."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in ("event_ids", "coverage_ids"):
                for msg_id in message.get(key, ()):
                    row = self._rows.pop(msg_id, None)
                    if row is not None:
                        self.confirmed += 1
                        clean = row.sends == 1 and row.sent_at is not None and row.sent_at >= 0
                        self.flow.on_ack(now - row.sent_at if clean else None)
                        if clean:
                            self.latencies.append(now - row.sent_at)
            for r in message.get("rejected", ()):
                if self._rows.pop(r.get("id"), None) is not None:
                    self.rejected += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)
