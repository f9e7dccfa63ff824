"""The agent's outbox semantics, in memory: a message stays until the SERVER acks it, and is sent again when
no ack came within the timeout (edge_agent/link/uplink.py: at most `window` out at once, re-send after
`ack_timeout_s`). A rejection in the ack (the server will never take it) also ends it."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass


@dataclass
class _Row:
    kind: str
    body: bytes
    sent_at: float | None = None   # monotonic seconds of the last send
    sends: int = 0


class Outbox:
    def __init__(self, window: int = 200, ack_timeout_s: float = 30.0) -> None:
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()
        self.confirmed = 0
        self.rejected = 0
        self.resent = 0

    def add(self, kind: str, msg_id: str, payload: dict) -> None:
        with self._lock:
            self._rows[msg_id] = _Row(kind, json.dumps(payload, separators=(",", ":")).encode())

    def due(self, now: float) -> list[tuple[str, str, bytes]]:
        """(id, kind, body) to send now, marked sent: never sent, or unconfirmed past the timeout, within the
        window of messages in flight."""
        out = []
        with self._lock:
            in_flight = sum(1 for r in self._rows.values()
                            if r.sent_at is not None and now - r.sent_at < self.ack_timeout_s)
            for msg_id, r in self._rows.items():
                if in_flight + len(out) >= self.window:
                    break
                if r.sent_at is None or now - r.sent_at >= self.ack_timeout_s:
                    if r.sent_at is not None:
                        self.resent += 1
                    r.sent_at, r.sends = now, r.sends + 1
                    out.append((msg_id, r.kind, r.body))
        return out

    def ack(self, message: dict) -> None:
        """Apply a server ack {event_ids, coverage_ids, rejected: [{id, reason}]}."""
        with self._lock:
            for key in ("event_ids", "coverage_ids"):
                for msg_id in message.get(key, ()):
                    if self._rows.pop(msg_id, None) is not None:
                        self.confirmed += 1
            for r in message.get("rejected", ()):
                if self._rows.pop(r.get("id"), None) is not None:
                    self.rejected += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)
