"""RoadMonitorAPI: the deployment guide's `submitDetections`, in Python, on httpx with tenacity's backoff."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from road_monitor_client.queue import OfflineQueue

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.roadquality-monitor.io/v1"


@dataclass(frozen=True)
class Receipt:
    """`queued`: the server stored it; `duplicate`: it had it already; `offline`: it waits in the queue."""
    status: str
    event_id: str | None = None


class Refused(Exception):
    """The server will never take this body (400 invalid, 401/403 credentials); it is kept in the queue's
    `refused` table with this reason."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class _Retry(Exception):
    """A failure worth another try: no network, a timeout, 429, or a 5xx."""

    def __init__(self, why: str, retry_after_s: float | None = None) -> None:
        super().__init__(why)
        self.retry_after_s = retry_after_s


class RoadMonitorAPI:
    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, *,
                 queue_path: str | Path = ":memory:", timeout_s: float = 10.0, max_attempts: int = 4,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.queue = OfflineQueue(queue_path)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._http = httpx.Client(timeout=timeout_s, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}", "User-Agent": "road-monitor-client"})

    def submit_detections(self, device_id: str, gps: Sequence[float], detections: list[dict[str, Any]],
                          image_bytes: bytes | None = None, timestamp: datetime | None = None) -> Receipt:
        """Queue one submission and send it. GPS is (lat, lon, accuracy_m); DETECTIONS are
        {bbox: [x1, y1, x2, y2], class, confidence}. Raises Refused when the server refuses it for good."""
        lat, lon, accuracy = gps
        when = (timestamp or datetime.now(timezone.utc)).astimezone(timezone.utc)
        body: dict[str, Any] = {
            "device_id": device_id,
            "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "gps": {"lat": lat, "lon": lon, "accuracy": accuracy},
            "detections": detections,
        }
        if image_bytes is not None:
            body["image_base64"] = base64.b64encode(image_bytes).decode("ascii")
        row_id = self.queue.put(json.dumps(body, separators=(",", ":")))
        # Older submissions first: a phone leaving a tunnel sends its backlog in order.
        receipt = Receipt("offline")
        for pending_id, text in self.queue.pending():
            try:
                result = self._deliver(pending_id, text)
            except Refused:
                if pending_id == row_id:
                    raise
                continue  # an older body the server refuses: kept aside with its reason, not in the way
            if pending_id == row_id:
                receipt = result
            if result.status == "offline":
                break
        return receipt

    def flush(self) -> dict[str, int]:
        """Send what waits in the queue, oldest first; stops at the first that cannot be sent now.
        Counts by outcome (queued, duplicate, refused, offline)."""
        counts = {"queued": 0, "duplicate": 0, "refused": 0, "offline": 0}
        for row_id, text in self.queue.pending():
            try:
                result = self._deliver(row_id, text)
            except Refused:
                counts["refused"] += 1
                continue
            counts[result.status] += 1
            if result.status == "offline":
                break
        return counts

    def close(self) -> None:
        self._http.close()
        self.queue.close()

    def __enter__(self) -> RoadMonitorAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------------
    def _deliver(self, row_id: int, text: str) -> Receipt:
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                                    retry=retry_if_exception(lambda e: isinstance(e, _Retry)), reraise=True):
                with attempt:
                    receipt = self._post(text)
        except _Retry as exc:
            self.queue.failed_attempt(row_id, str(exc))
            log.info("submission %d stays queued: %s", row_id, exc)
            return Receipt("offline")
        except Refused as exc:
            self.queue.refuse(row_id, exc.status_code, json.dumps(exc.detail))
            raise
        self.queue.done(row_id)
        return receipt

    def _post(self, text: str) -> Receipt:
        try:
            response = self._http.post(f"{self.base_url}/detections", content=text,
                                       headers={"Content-Type": "application/json"})
        except httpx.TransportError as exc:  # no network, refused connection, timeout
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        if response.status_code == 202:
            return Receipt("queued", response.json().get("event_id"))
        if response.status_code == 409:
            return Receipt("duplicate", response.json().get("event_id"))
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code}", _retry_after(response))
        raise Refused(response.status_code, _detail(response))

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)(state)
        if isinstance(exc, _Retry) and exc.retry_after_s is not None:
            return min(max(backoff, exc.retry_after_s), self.max_backoff_s)
        return backoff


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text
