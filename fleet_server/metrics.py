"""Prometheus metrics: the names agreed in DESIGN.md plus the ingest counters.

Device-reported figures (queue depth, inference time) live in PostGIS, so they are read at scrape time
and every API process reports the same numbers: the alerts and panels take their max across processes, not
their sum (two replicas doubled the fleet's failed inferences and paged at half the threshold).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from fleet_server.device_view import REJECTED_24H, coded_problems, dated_ahead, state_of

log = logging.getLogger(__name__)

# The guide's "Detections Per Hour" panel and HighErrorRate alert read this one counter, so a fleet's MQTT events
# count here too (code "mqtt"), not only the phones' HTTP posts.
SUBMISSIONS = Counter("road_detection_submissions", "Detections submitted: status queued (stored), duplicate or "
                      "failed (everything else: invalid, unauthorised, rate-limited, server error); code: the HTTP "
                      "status of POST /detections, or mqtt for events from the vehicles", ["status", "code"])
API_LATENCY = Histogram("road_api_latency_seconds", "HTTP API latency", ["method", "route"],
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
# The guide's "API Availability 99.9 %" KPI: the share of answers that are not 5xx (deploy/alerts.yml records it).
API_RESPONSES = Counter("road_api_responses", "HTTP API answers by route template and status code",
                        ["method", "route", "code"])
API_READS = Counter("road_api_reads", "API reads by the database that served them: replica, or primary (no replica "
                    "configured, or it was lagging, unreachable or without this process's latest write)",
                    ["served_by"])
# Labelled by the pool so that a server without a replica exports no series (and no alert fires for it).
API_READ_REPLICA_UP = Gauge("road_api_read_replica_up", "1 while the read replica serves the API's reads, 0 while "
                            "it is unreachable or lagging and the primary serves them", ["pool"])
API_AUTH_THROTTLED = Counter("road_api_auth_throttled", "Requests refused (429) because their source address failed "
                             "authentication too often")
API_BUSY = Counter("road_api_busy", "API requests refused (503) after waiting api.queue_wait_s for one of "
                   "api.max_concurrent_requests slots")
INGEST_MESSAGES = Counter("road_ingest_messages", "Messages handled by ingest workers", ["kind", "outcome"])
INGEST_BATCH_SECONDS = Histogram("road_ingest_batch_seconds", "Time to store and commit one batch",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
INGEST_ACKS = Counter("road_ingest_acks", "Ack messages published after commit")
INGEST_DB_ERRORS = Counter("road_ingest_db_errors", "Failed batch transactions (retried)")
INGEST_REJECTED_DROPPED = Counter("road_ingest_rejected_dropped", "Rejected messages not kept as dead letters "
                                  "(over the per-device hourly cap); their devices still get the reason")
INGEST_WAITING = Gauge("road_ingest_waiting_messages", "Messages received by this process's ingest workers and not "
                       "yet committed")
INGEST_STALLED = Gauge("road_ingest_stalled_seconds", "Seconds this process's ingest workers have not committed while "
                       "messages wait (0 while they keep up)")
AGGREGATE_LOCKS = Counter("road_aggregate_area_locks", "Batches by the area-lock level they took: fine (cells), "
                          "coarse (16x16 cells), global (too spread out for aggregate.max_area_locks), or try "
                          "(ingest workers: the free cells, without waiting)", ["level"])
INGEST_DEFERRED = Counter("road_ingest_deferred", "Events and coverage records left for the next batch because "
                          "another worker held their map area")
INGEST_BROKER_CONNECTS = Counter("road_ingest_broker_connects", "Ingest worker (re)connections to the broker")
INGEST_BROKER_CONNECTED = Gauge("road_ingest_broker_connected", "1 while the ingest worker is connected to the "
                                "broker (a dead broker publishes no Last Will: nothing else moves)", ["client"])
INGEST_RETAINED_CLEARED = Counter("road_ingest_retained_cleared", "Messages a device published retained on event, "
                                  "coverage or command-result topics, which the ingest workers cleared at the "
                                  "broker (they were still ingested as usual)", ["kind"])

INFERENCE_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SUBMISSION_STATUS = {202: "queued", 409: "duplicate"}


INGEST_SUBMISSION_STATUS = {"stored": "queued", "duplicate": "duplicate", "rejected": "failed"}


def count_submission(code: int) -> None:
    SUBMISSIONS.labels(SUBMISSION_STATUS.get(code, "failed"), str(code)).inc()


def count_ingested(kind: str, outcome: str, n: int = 1) -> None:
    """N messages of KIND (event, coverage, status, result, unknown) handled by ingest with OUTCOME (stored,
    duplicate, rejected); events count as detection submissions too."""
    INGEST_MESSAGES.labels(kind, outcome).inc(n)
    if kind == "event":
        SUBMISSIONS.labels(INGEST_SUBMISSION_STATUS[outcome], "mqtt").inc(n)


class DeviceCollector(Collector):
    """road_queue_depth, road_inference_latency_seconds, road_devices{state} and road_device_problems, from the
    devices table."""

    def __init__(self, fetch: Callable[[str], list[tuple]], stale_after_s: float) -> None:
        self.bind(fetch, stale_after_s)

    def bind(self, fetch: Callable[[str], list[tuple]], stale_after_s: float) -> None:
        """Read devices with FETCH; another database's devices start new baselines (see _new_errors)."""
        self.fetch = fetch
        self.stale_after_s = stale_after_s
        self._errors_seen: dict[str, float] = {}  # each device's inference_errors at the last scrape
        self._errors_total = 0.0
        self._last_read: tuple[list[tuple], dict, datetime, float] | None = None  # rows, refused, read at (UTC, mono)

    def collect(self) -> Iterator:
        try:
            rows = self.fetch("SELECT state, queue_depth, inference_ms, last_seen, "
                              "CASE WHEN jsonb_typeof(last_status->'inference_errors') = 'number' "
                              "THEN (last_status->>'inference_errors')::float8 END, id, last_status, state_at, "
                              "dated_ahead_s, dated_ahead_at, finds_nothing FROM devices WHERE revoked_at IS NULL")
            refused = {r[0]: (int(r[1]), str(r[2])) for r in self.fetch(REJECTED_24H)}
            self._last_read = (rows, refused, datetime.now(UTC), time.monotonic())
            fresh = True
        except Exception as exc:  # a scrape must not fail because PostGIS is away
            if self._last_read is None:
                log.warning("device metrics unavailable: %s", exc)
                return
            log.warning("device metrics unavailable (%s): exporting the last figures read", exc)
            fresh = False
        # While PostGIS is away, the last figures read, states judged as of then: the series vanished, so every
        # RoadDeviceProblem resolved during a database outage and paged again 15 minutes after it.
        rows, refused, now, read_mono = self._last_read
        age = GaugeMetricFamily("road_device_metrics_age_seconds", "Seconds since the device figures were read "
                                "from the database (0 while it answers; while it is away they are its last answer)")
        age.add_metric([], 0.0 if fresh else time.monotonic() - read_mono)
        yield age
        # Devices that can deliver only: a parked van's last status (stopped) kept the final coverage record it
        # sent as it stopped, acked a moment later, so RoadIngestStalled paged every night the fleet was parked.
        depth = GaugeMetricFamily("road_queue_depth", "Sum of the outbox queue depths (last status) of the devices "
                                  "that are online")
        depth.add_metric([], float(sum(r[1] or 0 for r in rows if r[0] not in ("offline", "stopped"))))
        yield depth
        states = GaugeMetricFamily("road_devices", "Devices by state (stale: online by its last status but silent "
                                   "for ingest.stale_after_s), as the API and `device ls` say it", labels=["state"])
        counts: dict[str, int] = {}
        for r in rows:
            state = state_of(r[0], r[3], None, now, self.stale_after_s)
            counts[state] = counts.get(state, 0) + 1
        for state, n in sorted(counts.items()):
            states.add_metric([state], n)
        yield states
        # The latest figure of each device that runs: a parked van's last one is not the fleet's now.
        values = [r[2] / 1000.0 for r in rows if r[2] is not None and r[0] not in ("offline", "stopped")]
        buckets = [(str(b), float(sum(v <= b for v in values))) for b in INFERENCE_BUCKETS_S]
        buckets.append(("+Inf", float(len(values))))
        hist = HistogramMetricFamily("road_inference_latency_seconds",
                                     "Detector inference time per frame: status ok = latest of each device "
                                     "not offline or stopped; "
                                     "status error = failed inferences the devices counted since they started",
                                     labels=["status"])
        hist.add_metric(["ok"], buckets, sum_value=sum(values))
        # Failures have no duration: every one falls in every bucket, so _count is the failure count.
        errors = self._new_errors({r[5]: r[4] for r in rows if r[4] is not None})
        hist.add_metric(["error"], [(b, errors) for b, _ in buckets], sum_value=0.0)
        yield hist
        # Per device and problem, for the vans that are online only (the silent ones are road_devices' to count):
        # a frozen camera on a driving van fired no alert at all. Only the devices with a problem have series.
        troubled = GaugeMetricFamily("road_device_problems", "1 for each problem an online device's last status "
                                     "or its refused messages show (codes as the API's problem_codes: camera, "
                                     "gnss, detector, outbox, clock, sparse_frames, mount, unplaced, finds_nothing, "
                                     "refused)",
                                     labels=["device", "problem"])
        for r in rows:
            if state_of(r[0], r[3], None, now, self.stale_after_s) != "online":
                continue
            status = r[6] if isinstance(r[6], dict) else {}
            coded = coded_problems(status, r[7], refused.get(r[5]), dated_ahead(r[8], r[9], now), r[10])
            for code in dict.fromkeys(code for code, _ in coded):
                troubled.add_metric([r[5], code], 1.0)
        yield troubled


    def _new_errors(self, counts: dict[str, float]) -> float:
        """A counter of the failed inferences the devices reported while this process watched. Each device's
        figure counts since its agent started, so their sum fell whenever a van restarted, and Prometheus took
        each fall for a reset and the whole remaining sum for new failures (ModelInferenceFailed fired on a
        fleet powering on). A device's first figure is its baseline; a figure below the last one is a restarted
        agent's, all new."""
        for device, count in counts.items():
            before = self._errors_seen.get(device)
            if before is not None:
                self._errors_total += count - before if count >= before else count
            self._errors_seen[device] = count
        return self._errors_total


_registered: DeviceCollector | None = None


def register_device_collector(fetch: Callable[[str], list[tuple]], stale_after_s: float) -> None:
    """Point the device collector at a database (the latest app wins; tests create several apps)."""
    global _registered
    if _registered is None:
        _registered = DeviceCollector(fetch, stale_after_s)
        REGISTRY.register(_registered)
    else:
        _registered.bind(fetch, stale_after_s)
