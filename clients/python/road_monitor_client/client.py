"""RoadMonitorAPI: the deployment guide's `submitDetections`, in Python, on httpx with tenacity's backoff."""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from road_monitor_client.queue import OfflineQueue, default_queue_path

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.roadquality-monitor.io/v1"
CONFIRMED = ("queued", "duplicate")
# Only these say "this body is wrong" (invalid, too large); with any other status, a retry may succeed.
BODY_REFUSALS = (400, 413, 422)
CREDENTIAL_REFUSALS = (401, 403)
DEFAULT_RATE_LIMIT_WAIT_S = 60.0  # a 429 without Retry-After
MAX_WAIT_S = 24 * 3600.0  # a Retry-After further ahead is a broken header; it must not stop sending for weeks


@dataclass(frozen=True)
class Receipt:
    """`queued`: the server stored it; `duplicate`: it had it already; `offline`: it waits in the queue (no
    network, a 5xx, or an answer that is not the server's: `error` says which); `rate_limited`: it waits in
    the queue and nothing is sent before `not_before` (the server's Retry-After)."""
    status: str
    event_id: str | None = None
    error: str | None = None
    not_before: datetime | None = None


class Refused(Exception):
    """The server refused this body for good (400, 413 or 422 with its error body); it is kept in the queue's
    `refused` table with this reason (`OfflineQueue.requeue_refused()` puts it back)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class CredentialsRefused(Exception):
    """The server refused the token (401: unknown, expired, revoked; 403: not this device's). Nothing is lost:
    every body stays queued; a client made with a new token sends them."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class _Later(Exception):
    """The body stays queued. RETRY_NOW: worth another try within this call (no network, a 5xx);
    RETRY_AFTER_S: the server said how long to wait; RATE_LIMITED: that was a 429."""

    def __init__(self, why: str, *, retry_now: bool = False, retry_after_s: float | None = None,
                 rate_limited: bool = False) -> None:
        super().__init__(why)
        self.retry_now = retry_now
        self.retry_after_s = retry_after_s
        self.rate_limited = rate_limited


class RoadMonitorAPI:
    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, *,
                 queue_path: str | Path | None = None, timeout_s: float = 10.0, max_attempts: int = 4,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        """QUEUE_PATH: the queue's SQLite file; None: one per base URL in the user's data directory
        (`default_queue_path`); ":memory:" only for a queue that may die with the process."""
        self.base_url = base_url.rstrip("/")
        self.queue = OfflineQueue(default_queue_path(self.base_url) if queue_path is None else queue_path)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._http = httpx.Client(timeout=timeout_s, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}", "User-Agent": "road-monitor-client"})

    def submit_detections(self, device_id: str, gps: Sequence[float], detections: list[dict[str, Any]],
                          image_bytes: bytes | None = None, timestamp: datetime | None = None) -> Receipt:
        """Queue one submission and send it, after what waits before it. GPS is (lat, lon, accuracy_m);
        DETECTIONS are {bbox: [x1, y1, x2, y2], class, confidence}. TIMESTAMP (default now) is read as UTC when
        it has no zone, as `datetime.utcnow()` in the deployment guide's sample gives it. Raises Refused when the
        server refuses this body for good, CredentialsRefused when it refuses the token (the body stays queued)."""
        row_id = self.queue.put(_encode(device_id, gps, detections, image_bytes, timestamp))
        not_before = self.queue.not_before()
        if not_before is not None:  # the server asked to wait: no request before then
            return Receipt("rate_limited", error=f"the server asked to wait until {not_before.isoformat()}",
                           not_before=not_before)
        receipt = Receipt("offline")
        for pending_id, outcome in self._drain():
            if isinstance(outcome, Refused):
                if pending_id == row_id:
                    raise outcome
                continue  # an older body the server refuses: kept aside with its reason, not in the way
            receipt = outcome  # an older body that stays queued ends the drain: this one waits for the same reason
            if pending_id == row_id:
                break
        return receipt

    def flush(self) -> dict[str, int]:
        """Send what waits in the queue, oldest first; stops at the first that cannot be sent now, and sends
        nothing while the server's Retry-After runs. Counts by outcome (queued, duplicate, refused) and what
        still waits. Raises CredentialsRefused when the server refuses the token (everything stays queued)."""
        counts = {"queued": 0, "duplicate": 0, "refused": 0}
        if self.queue.not_before() is None:
            for _row_id, outcome in self._drain():
                if isinstance(outcome, Refused):
                    counts["refused"] += 1
                elif outcome.status in CONFIRMED:
                    counts[outcome.status] += 1
        counts["waiting"] = len(self.queue)
        return counts

    def close(self) -> None:
        self._http.close()
        self.queue.close()

    def __enter__(self) -> RoadMonitorAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------------
    def _drain(self) -> Iterator[tuple[int, Receipt | Refused]]:
        """Send the queue oldest first (a phone leaving a tunnel sends its backlog in order), yielding each
        outcome; ends after the first body that stays queued, as the next would fare no better."""
        for row_id, text in self.queue.pending():
            try:
                receipt = self._deliver(row_id, text)
            except Refused as exc:
                yield row_id, exc
                continue
            yield row_id, receipt
            if receipt.status not in CONFIRMED:
                return

    def _deliver(self, row_id: int, text: str) -> Receipt:
        try:
            receipt = self._post_with_retries(text)
        except _Later as exc:
            return self._keep(row_id, exc)
        except Refused as exc:
            self.queue.refuse(row_id, exc.status_code, json.dumps(exc.detail))
            log.warning("submission %d refused for good: %s", row_id, exc)
            raise
        except CredentialsRefused as exc:
            self.queue.failed_attempt(row_id, str(exc))
            log.warning("the server refused the token (%s); %d submissions wait", exc, len(self.queue))
            raise
        self.queue.done(row_id)
        return receipt

    def _keep(self, row_id: int, why: _Later) -> Receipt:
        self.queue.failed_attempt(row_id, str(why))
        not_before = None
        if why.retry_after_s is not None:
            not_before = datetime.now(timezone.utc) + timedelta(seconds=why.retry_after_s)
            self.queue.hold_until(not_before)
        log.info("submission %d stays queued: %s", row_id, why)
        return Receipt("rate_limited" if why.rate_limited else "offline", error=str(why), not_before=not_before)

    def _post_with_retries(self, text: str) -> Receipt:
        for attempt in Retrying(stop=stop_after_attempt(self.max_attempts),
                                wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
                                retry=retry_if_exception(lambda e: isinstance(e, _Later) and e.retry_now),
                                reraise=True):
            with attempt:
                receipt = self._post(text)
        return receipt

    def _post(self, text: str) -> Receipt:
        try:
            response = self._http.post(f"{self.base_url}/detections", content=text,
                                       headers={"Content-Type": "application/json"})
        except httpx.TransportError as exc:  # no network, refused connection, timeout
            raise _Later(f"no answer: {type(exc).__name__}: {exc}", retry_now=True) from None
        return _judge(response)


def _encode(device_id: str, gps: Sequence[float], detections: list[dict[str, Any]], image_bytes: bytes | None,
            timestamp: datetime | None) -> str:
    """The guide's body, as compact JSON."""
    lat, lon, accuracy = gps
    when = timestamp or datetime.now(timezone.utc)
    # A naive time is UTC (the guide's `datetime.utcnow()`): astimezone() took it for the phone's local time and
    # moved a Sydney phone's sightings 11 h back, a Sao Paulo one's 3 h into the future.
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    body: dict[str, Any] = {
        "device_id": device_id,
        "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "gps": {"lat": lat, "lon": lon, "accuracy": accuracy},
        "detections": detections,
    }
    if image_bytes is not None:
        body["image_base64"] = base64.b64encode(image_bytes).decode("ascii")
    return json.dumps(body, separators=(",", ":"))


def _judge(response: httpx.Response) -> Receipt:
    """The receipt of a confirmed body, else raises what happens to it. Only the server's own answers count:
    a captive portal, a proxy or a redirect never confirms or refuses a body."""
    status = response.status_code
    if status in CREDENTIAL_REFUSALS:
        raise CredentialsRefused(status, _detail(response))
    if status == 429:
        raise _Later("HTTP 429: rate limited", rate_limited=True,
                     retry_after_s=_retry_after(response, DEFAULT_RATE_LIMIT_WAIT_S))
    if status >= 500:
        wait = _retry_after(response, None)
        raise _Later(f"HTTP {status}", retry_now=wait is None, retry_after_s=wait)
    problem = _problem(response)
    if status in BODY_REFUSALS and problem is not None:
        raise Refused(status, problem)
    event_id = _event_id(response)
    if status in (202, 409) and event_id is not None:
        return Receipt("queued" if status == 202 else "duplicate", event_id)
    raise _Later(f"HTTP {status} {_what(response)}: neither a confirmation nor a refusal of this body; kept queued")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # not JSON, or not text at all (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        return None


def _problem(response: httpx.Response) -> str | list[str] | None:
    """The detail of the server's error body {"detail": "..." or [...]}, else None."""
    body = _json(response)
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, (str, list)) else None


def _event_id(response: httpx.Response) -> str | None:
    body = _json(response)
    event_id = body.get("event_id") if isinstance(body, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


def _detail(response: httpx.Response) -> Any:
    problem = _problem(response)
    return problem if problem is not None else response.text[:200]


def _what(response: httpx.Response) -> str:
    """A short description of an unexpected answer, for the app's error message and the queue's last_error."""
    if response.is_redirect:
        return f"redirect to {response.headers.get('Location', '?')} (a captive portal, or a wrong base_url?)"
    problem = _problem(response)
    if problem is not None:
        return f"({problem})"
    kind = response.headers.get("Content-Type", "no Content-Type")
    return f"with a body that is not the server's JSON ({kind}: {response.text[:80]!r})"


def _retry_after(response: httpx.Response, default: float | None) -> float | None:
    """Retry-After in seconds (it is either seconds or an HTTP date), within [0, MAX_WAIT_S]."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return default
    if math.isnan(seconds):
        return default
    return min(max(seconds, 0.0), MAX_WAIT_S)
