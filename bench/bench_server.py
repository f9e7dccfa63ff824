"""Fleet server benchmark, as ratios measured in one run on the project's real PostGIS and Mosquitto.

1. Ingest: sightings/s through MQTT -> ingest worker -> PostGIS (validated, aggregated into defects, committed,
   acked back to the device) against a bare COPY of the same rows into a table like `sightings`.
   Target: ratio >= 0.3.
2. Map query: GET /api/v1/defects p95 for a 2 km bbox with 1M sightings / 100k defects in the database.
   Target: p95 <= 50 ms.

    python -m bench.bench_server [--quick] [--part ingest|map] [--events N] [--batch-size N] [--workers N]
                                 [--processes N] [--defects N] [--queries N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from fleet_server.config import ServerConfig
from fleet_server.migrate import migrate
from fleet_server.store import event_row
from roadmon_contract.geodesy import metres_per_degree
from scripts import services
from tests.server_fixtures import DeviceClient, make_event, offset, server_config, token

ROOT = Path(__file__).resolve().parent.parent

CENTRE = (48.137, 11.575)


def fresh_database(name: str) -> str:
    dsn = services.Postgres().create_database(name)
    migrate(dsn)
    return dsn


def synthetic_events(n: int, devices: list[str], potholes: int, rng: random.Random) -> list[dict]:
    """N events from DEVICES over POTHOLES spots along 20 km of road, with 3 m noise, in pass order."""
    spots = [offset(*CENTRE, rng.uniform(-10_000, 10_000), rng.uniform(-10_000, 10_000)) for _ in range(potholes)]
    start = datetime.now(UTC) - timedelta(days=3)
    out = []
    for i in range(n):
        lat, lon = spots[i % potholes]
        device = devices[i % len(devices)]
        at = start + timedelta(seconds=i * 2)
        out.append(make_event(device, *offset(lat, lon, rng.gauss(0, 2), rng.gauss(0, 2)), h=3.0, at=at, seq=i))
    return out


def bare_copy(dsn: str, events: list[dict]) -> float:
    """Rows/s of a plain COPY of the same sightings into a table with the same columns and indexes."""
    now = datetime.now(UTC)
    rows = [event_row(e, now, "bench") for e in events]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (LIKE sightings INCLUDING DEFAULTS INCLUDING INDEXES)")
        t0 = time.monotonic()
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                "COPY bench_copy (event_id, device_id, seq, captured_at, received_at, source, class, confidence, geom, "
                "h_accuracy_m, vehicle_geom, vehicle_h_accuracy_m, speed_mps, heading_deg, size_width_m, "
                "size_length_m, severity, frames, bbox, model, payload) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((r["event_id"], r["device_id"], r["seq"], r["captured_at"], r["received_at"],
                                r["source"], r["class"], r["confidence"], f"SRID=4326;POINT({r['lon']} {r['lat']})",
                                r["h"], f"SRID=4326;POINT({r['vlon']} {r['vlat']})", r["vh"], r["speed"],
                                r["heading"], r["width"], r["length"], r["severity"], r["frames"],
                                "{" + ",".join(str(v) for v in r["bbox"]) + "}", json.dumps(r["model"]),
                                json.dumps(r["payload"])))
        elapsed = time.monotonic() - t0
        conn.execute("DROP TABLE bench_copy")
    return len(rows) / elapsed


def ingest_rate(dsn: str, info: services.ServiceInfo, events: list[dict], devices: list[str], workers: int,
                tmp: Path, batch_size: int | None = None, processes: int = 1) -> tuple[float, dict]:
    """Sightings/s from the first publish until every event is acked back to its device. The workers run
    as `fleet-server ingest` in a process of their own, as in production."""
    broker = services.Mosquitto()
    passwords = {d: secrets.token_urlsafe(12) for d in devices}
    for d, password in passwords.items():
        broker.add_device(d, password)
    conf = tmp / "ingest.toml"
    conf.write_text(f"""[mqtt]\nport = {info.mqtt_port}\nclient_id_prefix = "bench-{secrets.token_hex(3)}"
[ingest]\nshare_group = "bench{secrets.token_hex(3)}"\ndevices = {json.dumps(devices)}\n""")
    if batch_size:
        conf.write_text(conf.read_text() + f"batch_size = {batch_size}\n")
    env = {**os.environ, "ROADMON_DATABASE_DSN": dsn, "ROADMON_MQTT_PASSWORD": info.server_password}
    # The workers' logs go to files: an unread pipe would stall them once full.
    logs = [(tmp / f"ingest-{i}.log").open("w") for i in range(processes)]
    children_cpu = _cpu_s(resource.RUSAGE_CHILDREN)
    servers = [subprocess.Popen([sys.executable, "-m", "fleet_server", "-c", str(conf), "-v", "ingest", "--workers",
                                 str(workers), "--instance", str(i)], env=env, stdout=subprocess.DEVNULL,
                                stderr=logs[i], text=True) for i in range(processes)]
    clients: dict[str, DeviceClient] = {}
    try:
        time.sleep(3)  # workers connect and subscribe
        clients = {d: DeviceClient(info.mqtt_host, info.mqtt_port, d, passwords[d]) for d in devices}
        payloads = [(e["device_id"], json.dumps(e).encode()) for e in events]
        wanted = {e["event_id"] for e in events}
        t0, own_cpu = time.monotonic(), _cpu_s(resource.RUSAGE_SELF)
        pending = [clients[device].client.publish(f"roadmon/v1/{device}/event", body, qos=1)
                   for device, body in payloads]
        for p in pending:
            p.wait_for_publish(60)
        published_s = time.monotonic() - t0
        publish_cpu = _cpu_s(resource.RUSAGE_SELF) - own_cpu
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if set().union(*(c.acked_events() for c in clients.values())) >= wanted:
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        backend_cpu = _backend_cpu_s(dsn)
        acked = set().union(*(c.acked_events() for c in clients.values()))
        if not acked >= wanted:
            raise SystemExit(f"only {len(acked & wanted)} of {len(wanted)} events acked")
    finally:
        for c in clients.values():
            c.close()
        for server in servers:
            server.terminate()
        for server, log_file in zip(servers, logs, strict=True):
            server.wait(15)
            log_file.close()
    return len(events) / elapsed, {"published_s": published_s, "elapsed_s": elapsed, "publish_cpu_s": publish_cpu,
                                   "worker_cpu_s": _cpu_s(resource.RUSAGE_CHILDREN) - children_cpu,
                                   "backend_cpu_s": backend_cpu}


def _backend_cpu_s(dsn: str) -> float | None:
    """CPU seconds of the other PostgreSQL backends on DSN's database (the workers'), when they run here."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                               "AND pid <> pg_backend_pid()")]
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks
    except (OSError, ValueError, psycopg.Error):
        return None


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def seed_map(dsn: str, defects: int, per_defect: int, rng: random.Random) -> None:
    """DEFECTS defects spread over a 60 x 60 km region, PER_DEFECT sightings each, written with COPY."""
    start = datetime.now(UTC) - timedelta(days=20)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY defects (id, class, geom, h_accuracy_m, first_seen, last_seen, sighting_count, "
                          "vehicle_count, pass_count, severity, confidence, status) FROM STDIN") as copy:
                for i in range(1, defects + 1):
                    lat, lon = offset(*CENTRE, rng.uniform(-30_000, 30_000), rng.uniform(-30_000, 30_000))
                    copy.write_row((i, "pothole", f"SRID=4326;POINT({lon} {lat})", 1.0, start, start, per_defect, 3,
                                    per_defect, rng.random(), 0.8, rng.choice(["new", "confirmed", "scheduled"])))
            buf = io.StringIO()
            with cur.copy("COPY sightings (event_id, device_id, seq, captured_at, received_at, class, confidence, "
                          "geom, h_accuracy_m, payload, defect_id) FROM STDIN") as copy:
                for i in range(1, defects + 1):
                    for k in range(per_defect):
                        copy.write_row((str(uuid4_like(rng)), f"veh-{k % 7}", i * per_defect + k, start, start,
                                        "pothole", 0.8, f"SRID=4326;POINT({CENTRE[1]} {CENTRE[0]})", 3.0, "{}", i))
            del buf
        conn.execute("SELECT setval('defects_id_seq', %s)", (defects,))
        conn.execute("ANALYZE defects")
        conn.execute("ANALYZE sightings")


def uuid4_like(rng: random.Random) -> str:
    import uuid

    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def map_query_latency(dsn: str, info: services.ServiceInfo, queries: int, rng: random.Random,
                      tmp: Path) -> tuple[float, float, float]:
    from fastapi.testclient import TestClient

    from fleet_server.api import create_app

    cfg = server_config(dsn, info.mqtt_host, info.mqtt_port, info.server_user, info.server_password, tmp)
    viewer = token(dsn, "viewer", "bench")
    client = TestClient(create_app(cfg))
    headers = {"Authorization": f"Bearer {viewer}"}
    times, sizes = [], []
    for i in range(queries + 10):
        lat, lon = offset(*CENTRE, rng.uniform(-28_000, 28_000), rng.uniform(-28_000, 28_000))
        m_lat, m_lon = metres_per_degree(lat)
        half_lat, half_lon = 1000 / m_lat, 1000 / m_lon
        bbox = f"{lon - half_lon},{lat - half_lat},{lon + half_lon},{lat + half_lat}"
        t0 = time.monotonic()
        r = client.get("/api/v1/defects", params={"bbox": bbox, "limit": 5000}, headers=headers)
        dt = time.monotonic() - t0
        assert r.status_code == 200, r.text
        if i >= 10:  # the first requests warm the pool and the token cache
            times.append(dt)
            sizes.append(len(r.json()["features"]))
    client.app.state.pool.close()
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], statistics.mean(sizes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers (a minute)")
    parser.add_argument("--events", type=int, help="sightings sent through MQTT (default 20000, quick 3000)")
    parser.add_argument("--workers", type=int, default=1, help="ingest workers (threads) per process")
    parser.add_argument("--processes", type=int, default=1, help="`fleet-server ingest` processes, one shared group")
    parser.add_argument("--defects", type=int, help="defects for the map query (default 100000, quick 10000)")
    parser.add_argument("--per-defect", type=int, default=10, help="sightings per defect for the map query")
    parser.add_argument("--queries", type=int, help="map queries timed (default 300, quick 100)")
    parser.add_argument("--batch-size", type=int, default=None, help="ingest.batch_size (default: the config's)")
    parser.add_argument("--part", choices=["ingest", "map", "both"], default="both", help="which measurement")
    args = parser.parse_args()
    n_events = args.events or (3000 if args.quick else 20000)
    n_defects = args.defects or (10_000 if args.quick else 100_000)
    n_queries = args.queries or (100 if args.quick else 300)
    rng = random.Random(7)
    info = services.up()
    tmp = ROOT / ".state" / "bench-server"
    tmp.mkdir(parents=True, exist_ok=True)

    if args.part in ("ingest", "both"):
        bench_ingest(info, n_events, args.workers, rng, tmp, args.batch_size, args.processes)
    if args.part in ("map", "both"):
        bench_map(info, n_defects, args.per_defect, n_queries, rng, tmp)
    return 0


def bench_ingest(info: services.ServiceInfo, n_events: int, workers: int, rng: random.Random, tmp: Path,
                 batch_size: int | None, processes: int = 1) -> None:
    devices = [f"bench-{secrets.token_hex(3)}-{i}" for i in range(5)]
    events = synthetic_events(n_events, devices, max(10, n_events // 12), rng)
    dsn = fresh_database("bench_server_ingest")
    copy_rate = bare_copy(dsn, events)
    rate, stats = ingest_rate(dsn, info, events, devices, workers, tmp, batch_size, processes)
    with psycopg.connect(dsn) as conn:
        n_def = conn.execute("SELECT count(*) FROM defects").fetchone()[0]
        n_rows = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]
    size = batch_size or ServerConfig().ingest.batch_size
    print(f"ingest: {n_events} sightings, {processes} process(es) x {workers} worker(s), ingest.batch_size {size}, "
          f"{n_rows} rows, {n_def} defects; "
          f"all published after {stats['published_s']:.1f} s, all acked after {stats['elapsed_s']:.1f} s")
    backend = f"{stats['backend_cpu_s']:.1f} s" if stats["backend_cpu_s"] is not None else "?"
    print(f"  MQTT -> worker -> PostGIS -> ack: {rate:,.0f} sightings/s (CPU: worker process "
          f"{stats['worker_cpu_s']:.1f} s, its PostgreSQL backends {backend}, publishing devices "
          f"{stats['publish_cpu_s']:.1f} s)")
    print(f"  bare COPY of the same rows:       {copy_rate:,.0f} rows/s")
    ratio = rate / copy_rate
    print(f"  ratio {ratio:.2f} (target >= 0.3) {'PASS' if ratio >= 0.3 else 'FAIL'}")


def bench_map(info: services.ServiceInfo, n_defects: int, per_defect: int, n_queries: int, rng: random.Random,
              tmp: Path) -> None:
    dsn = fresh_database("bench_server_map")
    t0 = time.monotonic()
    seed_map(dsn, n_defects, per_defect, rng)
    print(f"map: {n_defects:,} defects, {n_defects * per_defect:,} sightings seeded in "
          f"{time.monotonic() - t0:.0f} s")
    p50, p95, mean_size = map_query_latency(dsn, info, n_queries, rng, tmp)
    print(f"  GET /api/v1/defects 2 km bbox: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms "
          f"({mean_size:.0f} defects per answer, {n_queries} queries) "
          f"{'PASS' if p95 <= 0.050 else 'FAIL'} (target p95 <= 50 ms)")


if __name__ == "__main__":
    sys.exit(main())
