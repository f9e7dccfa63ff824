"""POST /v1/detections under concurrent clients: the deployment guide's p95 < 200 ms target.

`fleet-server serve` (one process, no ingest workers) on the project's real PostGIS; C client threads, each a
phone of its own, post the guide's body (one detection, a new submission each time) as fast as the server
answers. Prints p50 / p95 / p99 latency, throughput, the server's CPU per request, and p95 as a ratio of
the guide's 200 ms.

    python -m bench.bench_detections [--quick] [--clients 20] [--posts 100]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import tomli_w

from bench.common import description
from fleet_server.migrate import migrate
from scripts import services
from tests.server_fixtures import iso, token

ROOT = Path(__file__).resolve().parent.parent

TARGET_P95_S = 0.200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(dsn: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (tmp / "dsn").write_text(dsn)
    (tmp / "server.toml").write_text(tomli_w.dumps({
        "database": {"dsn_file": str(tmp / "dsn"), "pool_max": 16},
        "api": {"host": "127.0.0.1", "port": port, "rate_limit_per_hour": 1_000_000},
        "models": {"dir": str(tmp / "models")}}))
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "fleet-server"), "-c", str(tmp / "server.toml"), "serve",
                             "--workers", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/openapi.json", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"fleet-server did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")


def client(url: str, key: str, device: str, posts: int, lat: float, out: list[float], codes: list[int],
           start: threading.Event) -> None:
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        start.wait()
        for i in range(posts):
            body = {"device_id": device, "timestamp": iso(t0 + timedelta(milliseconds=37 * i)),
                    "gps": {"lat": lat + i * 1e-4, "lon": 11.575, "accuracy": 5.0},
                    "detections": [{"bbox": [100, 150, 250, 300], "class": "pothole", "confidence": 0.87}]}
            begin = time.monotonic()
            response = http.post(url + "/v1/detections", json=body)
            out.append(time.monotonic() - begin)
            codes.append(response.status_code)


def main() -> int:
    ap = argparse.ArgumentParser(description=description(__doc__))
    ap.add_argument("--quick", action="store_true", help="25 posts per client")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--posts", type=int, default=100, help="posts per client")
    args = ap.parse_args()
    posts = 25 if args.quick else args.posts

    services.up()
    dsn = services.Postgres().create_database(f"bench_detections_{secrets.token_hex(3)}")
    migrate(dsn)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-detections-{secrets.token_hex(3)}"
    tmp.mkdir(parents=True)
    proc, url = start_server(dsn, tmp)
    try:
        devices = [f"bench-phone-{i:02d}" for i in range(args.clients)]
        keys = [token(dsn, "device", d, device_id=d) for d in devices]
        # One warm-up post each: connection pool, token verification (argon2) and caches are not the figure.
        for d, k in zip(devices, keys, strict=True):
            warm: list[float] = []
            client(url, k, d, 1, 10.0, warm, [], _set_event())
        latencies: list[list[float]] = [[] for _ in devices]
        codes: list[list[int]] = [[] for _ in devices]
        go = threading.Event()
        threads = [threading.Thread(target=client, args=(url, k, d, posts, 48.0 + n * 0.01, latencies[n], codes[n], go))
                   for n, (d, k) in enumerate(zip(devices, keys, strict=True))]
        for t in threads:
            t.start()
        cpu_before = process_cpu_s(proc.pid)
        wall = time.monotonic()
        go.set()
        for t in threads:
            t.join()
        wall = time.monotonic() - wall
        cpu_s = process_cpu_s(proc.pid) - cpu_before
    finally:
        proc.terminate()
        proc.wait(10)
    flat = sorted(x for xs in latencies for x in xs)
    status = sorted({c for cs in codes for c in cs})
    q = statistics.quantiles(flat, n=100)
    p50, p95, p99 = statistics.median(flat), q[94], q[98]
    print(f"POST /v1/detections, {args.clients} concurrent clients x {posts} posts ({len(flat)} requests, "
          f"answers {status}):")
    print(f"  p50 {p50 * 1000:.1f} ms   p95 {p95 * 1000:.1f} ms   p99 {p99 * 1000:.1f} ms   "
          f"throughput {len(flat) / wall:.0f} req/s")
    # Load-independent: the server process's own CPU per request (the machine is shared).
    print(f"  server CPU {cpu_s / len(flat) * 1000:.2f} ms/request ({cpu_s / wall:.2f} cores busy on average)")
    print(f"  p95 / the guide's 200 ms target: {p95 / TARGET_P95_S:.2f} ({'met' if p95 <= TARGET_P95_S else 'missed'})")
    return 0 if status == [202] else 1


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of PID so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _set_event() -> threading.Event:
    ev = threading.Event()
    ev.set()
    return ev


if __name__ == "__main__":
    sys.exit(main())
