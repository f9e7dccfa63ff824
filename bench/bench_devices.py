"""The fleet view at fleet scale: `GET /api/v1/devices` (what the dashboard's Devices tab loads on each refresh)
and `GET /api/v1/devices/{id}` (one box, what an on-call engineer or a script asks) over 10,000 devices and a
year's sightings, and 20 tabs asking for the list at once (they got 503s before the list was read once for all).

    python -m bench.bench_devices [--devices 10000] [--sightings 1500000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import psycopg

from bench.bench_export import api_process
from bench.bench_server import fresh_database, seed_map
from bench.common import description
from scripts import services

STATUS = json.dumps({"health": {"camera": "ok", "gnss": "ok", "detector": "ok", "outbox": "ok"},
                     "sent_at": "2026-12-06T00:00:00Z", "fps": 5.0, "fix": {"speed_mps": 10.0, "state": "ok"}})


def seed_devices(dsn: str, devices: int) -> None:
    """DEVICES online boxes, the seeded sightings dealt among them."""
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor().copy("COPY devices (id, state, last_seen, state_at, last_status, queue_depth) "
                                "FROM STDIN") as copy:
            for i in range(devices):
                copy.write_row((f"veh-{i:05d}", "online", now, now, STATUS, 0))
        conn.execute("UPDATE sightings SET device_id = 'veh-' || lpad((seq %% %s)::text, 5, '0')", (devices,))
        conn.execute("VACUUM ANALYZE sightings")
        conn.execute("ANALYZE devices")


def timed(client: httpx.Client, path: str, runs: int, encoding: str = "identity") -> tuple[float, int, int]:
    """Median milliseconds of RUNS answers to PATH asked with Accept-Encoding ENCODING, the answer's size in bytes
    and the bytes that came over the wire."""
    times, size, wire = [], 0, 0
    for _ in range(runs):
        t0 = time.monotonic()
        answer = client.get(path, headers={"Accept-Encoding": encoding})
        answer.raise_for_status()
        times.append((time.monotonic() - t0) * 1000)
        size, wire = len(answer.content), answer.num_bytes_downloaded
    return statistics.median(times), size, wire


def together(base: str, headers: dict, tabs: int) -> tuple[dict[int, int], float]:
    """TABS requests for the list at the same moment (a wall of screens signing in): status counts, slowest s."""
    def ask(_: int) -> tuple[int, float]:
        t0 = time.monotonic()
        return httpx.get(f"{base}/devices", headers=headers, timeout=300).status_code, time.monotonic() - t0

    with ThreadPoolExecutor(tabs) as pool:
        answers = list(pool.map(ask, range(tabs)))
    codes = [c for c, _ in answers]
    return {c: codes.count(c) for c in set(codes)}, max(s for _, s in answers)


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--sightings", type=int, default=1_500_000)
    parser.add_argument("--quick", action="store_true", help="2,000 devices, 200,000 sightings")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.sightings = 2_000, 200_000
    info = services.up()
    tmp = services.STATE / "bench-devices"
    shutil.rmtree(tmp, ignore_errors=True)
    dsn = fresh_database("bench_devices")
    t0 = time.monotonic()
    seed_map(dsn, args.sightings // 15, 15, random.Random(3))
    seed_devices(dsn, args.devices)
    print(f"seeded {args.devices} devices and {args.sightings} sightings in {time.monotonic() - t0:.0f} s")
    with api_process(dsn, info, tmp) as (base, headers, _api), \
            httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        every, every_size, _ = timed(client, "/devices", 5)
        packed, _, packed_size = timed(client, "/devices", 5, "gzip")
        # The seeded boxes share one status, which packs better than a real fleet's: defects are all different.
        defects, defects_size, _ = timed(client, "/defects?limit=5000", 5)
        defects_packed, _, defects_wire = timed(client, "/defects?limit=5000", 5, "gzip")
        one, _, _ = timed(client, f"/devices/veh-{args.devices // 2:05d}", 20)
        filtered, _, _ = timed(client, "/devices?state=offline", 5)
        burst = together(base, headers, 20)
    print(f"GET /devices (all {args.devices}): {every:.0f} ms, {every_size / 1e6:.1f} MB")
    print(f"  gzipped (api.compress_min_bytes; browsers ask for it): {packed:.0f} ms ({packed / every:.2f}x), "
          f"{packed_size / 1e6:.2f} MB over the wire ({every_size / packed_size:.0f}x smaller)")
    print(f"GET /defects?limit=5000: {defects:.0f} ms, {defects_size / 1e6:.1f} MB; gzipped {defects_packed:.0f} ms "
          f"({defects_packed / defects:.2f}x), {defects_wire / 1e6:.2f} MB "
          f"({defects_size / defects_wire:.1f}x smaller)")
    print(f"GET /devices?state=offline (none): {filtered:.0f} ms")
    print(f"GET /devices/{{id}}: {one:.1f} ms, {every / one:.0f}x faster than the whole list")
    codes, slowest = burst
    print(f"20 tabs asking at once: {', '.join(f'{n} x {c}' for c, n in sorted(codes.items()))}; the slowest "
          f"answered in {slowest:.1f} s ({slowest * 1000 / every:.1f}x one list)")


if __name__ == "__main__":
    main()
