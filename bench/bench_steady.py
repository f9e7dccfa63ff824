"""Steady fleet load: N vehicles report while a manager's map is in use.

Per run (fleet size x ingest processes), on a fresh database holding a city's map (10,000 defects): every
vehicle publishes one event every EVENT_EVERY_S, one coverage record every COVERAGE_EVERY_S and its retained
status every STATUS_EVERY_S, staggered over the fleet, for SECONDS after all have connected, each with its own
MQTT 5 login; events and coverage go through the agent's outbox rules (flow control, re-send until acked:
fleet_sim), statuses as the agent sends them (QoS 1, retained, no ack). `fleet-server ingest` processes (one
worker each, one shared group) store them; a `fleet-server serve` process answers GET /api/v1/defects for random
2 km boxes all along, and before the load for comparison. Printed per run:

- messages/s offered and stored; ack latency p50/p95/p99 (publish to ack, first sends only); re-sent, lost
  (published, never stored; nothing can be stored twice: the message id is the tables' key);
- CPU-s per 1,000 messages (statuses included): the ingest processes, and their PostgreSQL backends (by
  application_name), from the first publish until every event and coverage record is acked;
- map p50/p95 while loaded against idle.

    python -m bench.bench_steady [--vehicles 1000,3000,10000] [--processes 1,2] [--seconds 60] [--quick]

Everything shares one machine: the simulated fleet's own CPU (one thread drives every socket) competes with
the server's, so read the figures as an upper bound on latency and cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.bench_fleet import server_config
from bench.bench_server import CENTRE, _proc_cpu_s, fresh_database, seed_map
from bench.bench_storm import drop_fleet, local_fleet
from bench.common import description
from edge_agent.link.heartbeat import build_status
from fleet_sim.client import Swarm, VehicleLink
from fleet_sim.outbox import Outbox
from fleet_sim.provision import add_rows
from roadmon_contract import topics
from roadmon_contract.geodesy import metres_per_degree
from tests.conftest import free_port
from tests.server_fixtures import make_coverage, make_event, offset, token

ROOT = Path(__file__).resolve().parent.parent
PUMP_EVERY_S = 0.02
REGION_M = 20_000  # the fleet drives in a 20 km square around CENTRE, where the seeded map is
DRAIN_LIMIT_S = 300.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))] if ordered else float("nan")


class MapLoad:
    """GET /api/v1/defects for random 2 km boxes, RPS times a second, in a thread; latencies in seconds."""

    def __init__(self, base_url: str, viewer_token: str, rps: float, seed: int) -> None:
        self.base_url, self.rps = base_url, rps
        self.headers = {"Authorization": f"Bearer {viewer_token}"}
        self.rng = random.Random(seed)
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def one(self) -> float:
        lat, lon = offset(*CENTRE, self.rng.uniform(-REGION_M / 2, REGION_M / 2),
                          self.rng.uniform(-REGION_M / 2, REGION_M / 2))
        m_lat, m_lon = metres_per_degree(lat)
        half_lat, half_lon = 1000 / m_lat, 1000 / m_lon
        query = urllib.parse.urlencode({"bbox": f"{lon - half_lon},{lat - half_lat},{lon + half_lon},{lat + half_lat}",
                                        "limit": 5000})
        request = urllib.request.Request(f"{self.base_url}/api/v1/defects?{query}", headers=self.headers)
        t0 = time.monotonic()
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
        return time.monotonic() - t0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.latencies.append(self.one())
            except OSError:
                self.failures += 1
            self._stop.wait(1 / self.rps)

    def __enter__(self) -> MapLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


def backend_pids(dsn: str, application: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                           (application,))}


class Schedule:
    """When each vehicle's next event and coverage record are due: staggered evenly over the fleet."""

    def __init__(self, devices: list[str], args: argparse.Namespace, rng: random.Random, t0: float) -> None:
        self.event_every_s, self.coverage_every_s = args.event_every_s, args.coverage_every_s
        self.status_every_s = args.status_every_s
        self.rng = rng
        n = len(devices)
        self.next_event = {d: t0 + self.event_every_s * i / n for i, d in enumerate(devices)}
        self.next_coverage = {d: t0 + self.coverage_every_s * ((i + 0.5) / n) for i, d in enumerate(devices)}
        self.next_status = {d: t0 + self.status_every_s * ((i + 0.25) / n) for i, d in enumerate(devices)}
        self.statuses = 0
        self.home = {d: (rng.uniform(-REGION_M / 2, REGION_M / 2), rng.uniform(-REGION_M / 2, REGION_M / 2))
                     for d in devices}
        self.seq = dict.fromkeys(devices, 0)

    def release(self, boxes: dict[str, Outbox], links: dict[str, VehicleLink], now: float, wall: datetime) -> int:
        """Queue the events and coverage records due by NOW (returns how many) and publish the statuses due."""
        released = 0
        for device, due in self.next_status.items():
            if due <= now:
                status = build_status("online", device, None, None, broker="connected")
                links[device].client.publish(topics.status(device), json.dumps(status), qos=1, retain=True)
                self.next_status[device] = due + self.status_every_s
                self.statuses += 1
        for device, due in self.next_event.items():
            if due <= now:
                north, east = self.home[device]
                lat, lon = offset(*CENTRE, north + self.rng.gauss(0, 300), east + self.rng.gauss(0, 300))
                self.seq[device] += 1
                event = make_event(device, lat, lon, h=3.0, at=wall, seq=self.seq[device])
                boxes[device].add("event", event["event_id"], event)
                self.next_event[device] = due + self.event_every_s
                released += 1
        for device, due in self.next_coverage.items():
            if due <= now:
                north, east = self.home[device]
                start = offset(*CENTRE, north, east)
                line = [start, offset(*CENTRE, north + 400, east)]
                cov = make_coverage(device, line, wall - timedelta(seconds=self.coverage_every_s), wall,
                                    half_width=14.0)
                boxes[device].add("coverage", cov["coverage_id"], cov)
                self.next_coverage[device] = due + self.coverage_every_s
                released += 1
        return released


def one_run(info: dict, creds: dict[str, str], devices: list[str], processes: int, args: argparse.Namespace,
            tmp: Path) -> dict:
    rng = random.Random(len(devices) * 10 + processes)
    dsn = fresh_database(f"steady_{len(devices)}_{processes}")
    add_rows(dsn, devices)
    seed_map(dsn, 10_000, 5, rng)
    folder = tmp / f"{len(devices)}-{processes}"
    folder.mkdir()
    ingest_cfg = server_config(folder, f"{dsn}?application_name=bench-ingest", info)
    api_folder = folder / "api"
    api_folder.mkdir()
    api_cfg = server_config(api_folder, f"{dsn}?application_name=bench-api", info)
    port = free_port()
    exe = str(Path(sys.executable).with_name("fleet-server"))
    logs = [(folder / f"ingest-{i}.log").open("w") for i in range(processes)] + [(folder / "api.log").open("w")]
    servers = [subprocess.Popen([exe, "-c", str(ingest_cfg), "ingest", "--workers", "1", "--instance", str(i)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(processes)]
    api = subprocess.Popen([exe, "-c", str(api_cfg), "serve", "--workers", "0", "--host", "127.0.0.1",
                            "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logs[-1])
    boxes = {d: Outbox() for d in devices}
    swarm = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health")
        viewer = token(dsn, "viewer", "bench")
        idle = MapLoad(base, viewer, args.map_rps, seed=1)
        idle_latencies = [idle.one() for _ in range(60)][10:]  # the first warm the pool and the token cache
        time.sleep(2.0)  # the ingest workers subscribe
        swarm = Swarm.connect(info["mqtt_host"], info["mqtt_port"], boxes, creds)
        ingest_backends = backend_pids(dsn, "bench-ingest")
        cpu0 = {p.pid: _proc_cpu_s(p.pid) for p in servers} | {b: _proc_cpu_s(b) for b in ingest_backends}
        t0 = time.monotonic()
        schedule = Schedule(devices, args, rng, t0)
        by_device = {link.device_id: link for link in swarm.links}
        offered = 0
        with MapLoad(base, viewer, args.map_rps, seed=2) as loaded, Progress(transient=True) as progress:
            task = progress.add_task(f"{len(devices)} vehicles, {processes} ingest process(es)",
                                     total=args.seconds)
            while (now := time.monotonic()) - t0 < args.seconds:
                offered += schedule.release(boxes, by_device, now, datetime.now(UTC))
                swarm.pump()
                progress.update(task, completed=now - t0)
                time.sleep(PUMP_EVERY_S)
            load_s = time.monotonic() - t0
            while any(len(b) for b in boxes.values()) and time.monotonic() - t0 < load_s + DRAIN_LIMIT_S:
                swarm.pump()
                time.sleep(PUMP_EVERY_S)
            drained_s = time.monotonic() - t0
        ingest_backends |= backend_pids(dsn, "bench-ingest")  # a worker that reconnected meanwhile
        ingest_cpu = sum(_proc_cpu_s(p.pid) - cpu0[p.pid] for p in servers)
        backend_cpu = sum(_proc_cpu_s(b) - cpu0.get(b, 0.0) for b in ingest_backends)
    finally:
        if swarm is not None:
            swarm.close()
        for server in [*servers, api]:
            server.terminate()
        for server in [*servers, api]:
            server.wait(60)
        for log_file in logs:
            log_file.close()
    with psycopg.connect(dsn) as conn:
        events = conn.execute("SELECT count(*) FROM sightings WHERE device_id = ANY(%s)", (devices,)).fetchone()[0]
        coverage = conn.execute("SELECT count(*) FROM coverage WHERE device_id = ANY(%s)", (devices,)).fetchone()[0]
    latencies = [s for b in boxes.values() for s in b.latencies]
    stored = events + coverage
    handled = stored + schedule.statuses
    return {"vehicles": len(devices), "processes": processes,
            "offered_per_s": round((offered + schedule.statuses) / load_s, 1),
            "stored": stored, "resent": sum(b.resent for b in boxes.values()),
            "lost": offered - stored - sum(b.rejected for b in boxes.values()),
            "unacked": sum(len(b) for b in boxes.values()),
            "drain_after_s": round(drained_s - load_s, 1),
            "ack_p50_ms": round(1000 * percentile(latencies, 0.5)),
            "ack_p95_ms": round(1000 * percentile(latencies, 0.95)),
            "ack_p99_ms": round(1000 * percentile(latencies, 0.99)),
            "ingest_cpu_s_per_1k": round(1000 * ingest_cpu / handled, 2),
            "backend_cpu_s_per_1k": round(1000 * backend_cpu / handled, 2),
            "map_idle_p50_ms": round(1000 * statistics.median(idle_latencies), 1),
            "map_idle_p95_ms": round(1000 * percentile(idle_latencies, 0.95), 1),
            "map_loaded_p50_ms": round(1000 * statistics.median(loaded.latencies), 1),
            "map_loaded_p95_ms": round(1000 * percentile(loaded.latencies, 0.95), 1),
            "map_failures": loaded.failures}


COLUMNS = ("vehicles", "processes", "offered_per_s", "ack_p50_ms", "ack_p95_ms", "ack_p99_ms", "resent", "lost",
           "ingest_cpu_s_per_1k", "backend_cpu_s_per_1k", "map_idle_p95_ms", "map_loaded_p95_ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--vehicles", default="1000,3000,10000", help="comma-separated fleet sizes")
    parser.add_argument("--processes", default="1,2", help="comma-separated numbers of ingest processes")
    parser.add_argument("--seconds", type=float, default=60.0, help="load time per run")
    parser.add_argument("--event-every-s", type=float, default=30.0, help="seconds between a vehicle's events")
    parser.add_argument("--coverage-every-s", type=float, default=60.0,
                        help="seconds between a vehicle's coverage records")
    parser.add_argument("--status-every-s", type=float, default=30.0, help="seconds between a vehicle's statuses")
    parser.add_argument("--map-rps", type=float, default=5.0, help="map requests per second during the load")
    parser.add_argument("--quick", action="store_true", help="300 vehicles, 1 process, 20 s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = [300] if args.quick else [int(v) for v in args.vehicles.split(",")]
    process_counts = [1] if args.quick else [int(p) for p in args.processes.split(",")]
    if args.quick:
        args.seconds = 20.0
    info, devices, creds = local_fleet("steady", max(sizes))
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                for processes in process_counts:
                    results.append(one_run(info, creds, devices[:n], processes, args, Path(tmp)))
                    print(json.dumps(results[-1]), flush=True)
    finally:
        drop_fleet(info, devices)
    table = Table(title=f"steady load: per vehicle an event every {args.event_every_s:g} s, a coverage record every "
                        f"{args.coverage_every_s:g} s, a status every {args.status_every_s:g} s; map in use "
                        f"({args.map_rps:g} requests/s)")
    for column in COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    for r in results:
        table.add_row(*(str(r[c]) for c in COLUMNS))
    Console(width=200).print(table)
    return 1 if any(r["lost"] or r["unacked"] or r["map_failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
