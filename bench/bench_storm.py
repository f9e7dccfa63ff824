"""Reconnect storm: every vehicle comes back from the depot at once with a queue of events.

N simulated vehicles (fleet_sim: own MQTT 5 login each, the agent's outbox rules and flow control) connect to
the project-local Mosquitto at once, each with EVENTS queued, against PROCESSES `fleet-server ingest` processes
(one shared group; 1 unless --processes says more) and a fresh PostGIS database per run. Each size runs twice:
with the agent's adaptive flow control (window from 10, ack timeout from the measured ack latency) and with the
fixed rules (window 1000, ack timeout 60 s). Printed
per run: drain time (first publish to last ack), events re-sent, lost (queued but never stored), broker drops
(Mosquitto's "Outgoing messages are being dropped" lines during the run), CPU-s per 1,000 events of the
ingest processes together (PostgreSQL's own CPU not included).

    python -m bench.bench_storm [--vehicles 1000,3000] [--events 50] [--modes adaptive,fixed] [--processes 1,2]
                                [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from bench.bench_fleet import server_config
from bench.bench_server import fresh_database, synthetic_events
from bench.common import description
from edge_agent.link.flow import FlowControl
from fleet_sim.client import Swarm
from fleet_sim.outbox import Outbox
from fleet_sim.provision import add_logins, add_rows, remove_logins
from scripts import services
from tests.server_fixtures import iso

ROOT = Path(__file__).resolve().parent.parent
DRAIN_LIMIT_S = 1800.0
PUMP_EVERY_S = 0.02


def flow_for(mode: str) -> FlowControl:
    if mode == "fixed":
        return FlowControl(max_window=1000, min_timeout_s=60.0, max_timeout_s=60.0, adaptive=False)
    return FlowControl(max_window=1000, min_timeout_s=60.0, max_timeout_s=1800.0)


def broker_drops() -> int:
    log = services.Mosquitto().logfile
    return log.read_text(errors="replace").count("Outgoing messages are being dropped") if log.exists() else 0


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_storm(info: dict, creds: dict[str, str], devices: list[str], events: int, mode: str, tmp: Path,
              processes: int = 1) -> dict:
    dsn = fresh_database(f"storm_{mode}_{len(devices)}")  # migrated
    add_rows(dsn, devices)
    rng = random.Random(len(devices))
    queued = synthetic_events(events * len(devices), devices, potholes=max(50, len(devices)), rng=rng)
    start, step = datetime.now(UTC) - timedelta(days=2), timedelta(days=1) / len(queued)
    for i, event in enumerate(queued):  # all within the last two days: none refused as from the future
        event["captured_at"] = iso(start + i * step)
    boxes = {d: Outbox(flow_for(mode)) for d in devices}
    for event in queued:
        boxes[event["device_id"]].add("event", event["event_id"], event)
    folder = tmp / f"{mode}-{len(devices)}-{processes}"
    folder.mkdir()
    cfg = server_config(folder, dsn, info)
    cpu0 = children_cpu_s()
    logs = [(folder / f"ingest-{i}.log").open("w") for i in range(processes)]
    ingest = [subprocess.Popen([str(Path(sys.executable).with_name("fleet-server")), "-c", str(cfg), "ingest",
                                "--instance", str(i)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=logs[i])
              for i in range(processes)]
    swarm = None
    try:
        time.sleep(2.0)  # the ingest worker subscribes before the storm
        swarm = Swarm.connect(info["mqtt_host"], info["mqtt_port"], boxes, creds, timeout_s=60)
        drops0, t0 = broker_drops(), time.monotonic()
        while any(len(b) for b in boxes.values()) and time.monotonic() - t0 < DRAIN_LIMIT_S:
            swarm.pump()
            time.sleep(PUMP_EVERY_S)
        drain_s = time.monotonic() - t0
        drops = broker_drops() - drops0
    finally:
        if swarm is not None:
            swarm.close()
        for process in ingest:
            process.terminate()
        for process, log_file in zip(ingest, logs, strict=True):
            process.wait(60)
            log_file.close()
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]
    total = events * len(devices)
    rejected = sum(b.rejected for b in boxes.values())
    return {"vehicles": len(devices), "mode": mode, "processes": processes, "events": total,
            "drain_s": round(drain_s, 1),
            "resent": sum(b.resent for b in boxes.values()), "rejected": rejected, "lost": total - stored - rejected,
            "unacked": sum(len(b) for b in boxes.values()), "broker_drops": drops,
            "ingest_cpu_s_per_1k": round((children_cpu_s() - cpu0) / total * 1000, 2)}


def local_fleet(prefix: str, n: int) -> tuple[dict, list[str], dict[str, str]]:
    """The local services' connection details, and N vehicles PREFIX-00000... with broker logins (their passwords)."""
    info = asdict(services.up())
    devices = [f"{prefix}-{i:05d}" for i in range(n)]
    t0 = time.monotonic()
    creds = add_logins(Path(info["passwd_file"]), Path(info["broker_pid_file"]), devices)
    print(f"{len(devices)} broker logins in {time.monotonic() - t0:.0f} s", flush=True)
    time.sleep(1.0)  # the broker re-reads its password file on the reload signal
    return info, devices, creds


def drop_fleet(info: dict, devices: list[str]) -> None:
    """Remove the broker logins local_fleet added, so the project's password file does not keep them."""
    t0 = time.monotonic()
    removed = remove_logins(Path(info["passwd_file"]), Path(info["broker_pid_file"]), devices)
    print(f"{removed} broker logins removed in {time.monotonic() - t0:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--vehicles", default="1000,3000", help="comma-separated fleet sizes")
    parser.add_argument("--events", type=int, default=50, help="events queued per vehicle")
    parser.add_argument("--modes", default="adaptive,fixed")
    parser.add_argument("--processes", default="1", help="comma-separated numbers of ingest processes")
    parser.add_argument("--quick", action="store_true", help="200 vehicles x 20 events")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = [200] if args.quick else [int(v) for v in args.vehicles.split(",")]
    events = 20 if args.quick else args.events
    info, devices, creds = local_fleet("storm", max(sizes))
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                for processes in (int(p) for p in args.processes.split(",")):
                    for mode in args.modes.split(","):
                        print(f"storm: {n} vehicles x {events} events, {mode} flow control, {processes} ingest "
                              f"process(es)", flush=True)
                        results.append(one_storm(info, creds, devices[:n], events, mode, Path(tmp), processes))
                        print(json.dumps(results[-1]), flush=True)
    finally:
        drop_fleet(info, devices)
    table = Table(title="reconnect storm: every vehicle back at once")
    columns = ("vehicles", "mode", "processes", "events", "drain_s", "resent", "lost", "broker_drops",
               "ingest_cpu_s_per_1k")
    for col in columns:
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(*(str(r[c]) for c in columns))
    console = Console()
    # Piped (a log, bench.run_all's output) a console is 80 columns and cuts the headers: print the table whole.
    (console if console.is_terminal else Console(width=200)).print(table)
    return 1 if any(r["lost"] or r["unacked"] or r["rejected"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
