"""Whole-city exports: time, size and the API process's memory for `GET /api/v1/defects.geojson` and `.csv`.

A city's year is ~100,000 defects; a manager's Export button asks for all of them. The API runs as its own
process (uvicorn, as `fleet-server serve`), so its peak resident memory (VmHWM) above the warmed-up level is
what one export, and four at once, cost it.

    python -m bench.bench_export [--defects 100000] [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.bench_server import fresh_database, seed_map
from bench.common import description
from fleet_server.migrate import migrate
from scripts import services
from tests.server_fixtures import server_config, token

ROOT = Path(__file__).resolve().parents[1]

SERVE = """
import sys, uvicorn
from fleet_server.api import create_app
from fleet_server.config import load
uvicorn.run(create_app(load(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def write_config(cfg, path: Path) -> None:
    import tomli_w

    path.write_bytes(tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True)).encode())


@contextlib.contextmanager
def api_process(dsn: str, info: services.ServiceInfo, tmp: Path) -> Iterator[tuple[str, dict, subprocess.Popen]]:
    """The API over DSN as its own process (as `fleet-server serve`): (its /api/v1 URL, a viewer's headers, the
    process), once it answers; stopped afterwards."""
    cfg = server_config(dsn, info.mqtt_host, info.mqtt_port, info.server_user, info.server_password, tmp)
    write_config(cfg, tmp / "server.toml")
    port = free_port()
    api = subprocess.Popen([sys.executable, "-c", SERVE, str(tmp / "server.toml"), str(port)], cwd=ROOT)
    headers = {"Authorization": f"Bearer {token(dsn, 'viewer', 'bench')}"}
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/defects", params={"limit": 10}, headers=headers).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield base, headers, api
    finally:
        api.terminate()
        api.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--defects", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20,000 defects")
    args = parser.parse_args()
    if args.quick:
        args.defects = 20_000
    info = services.up()
    tmp = services.STATE / "bench-export"
    shutil.rmtree(tmp, ignore_errors=True)
    dsn = fresh_database("bench_export")
    migrate(dsn)
    t0 = time.monotonic()
    seed_map(dsn, args.defects, 1, random.Random(5))
    print(f"seeded {args.defects} defects in {time.monotonic() - t0:.1f} s")
    with api_process(dsn, info, tmp) as (base, headers, api):
        print(f"{'export':<28} {'s':>6} {'MB':>7} {'API peak RSS +MB':>17}")
        for label, path, parallel in (("GeoJSON", "defects.geojson", 1), ("CSV", "defects.csv", 1),
                                      ("GeoJSON, 4 at once", "defects.geojson", 4)):
            httpx.get(f"{base}/defects", params={"limit": 10}, headers=headers)
            base_mb = memory_mb(api.pid, "VmRSS")
            reset_peak(api.pid)
            t0 = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                sizes = list(pool.map(lambda url: len(httpx.get(url, headers=headers, timeout=300)
                                                      .raise_for_status().content), [f"{base}/{path}"] * parallel))
            elapsed = time.monotonic() - t0
            peak = memory_mb(api.pid, "VmHWM") - base_mb
            print(f"{label:<28} {elapsed:6.2f} {sizes[0] / 1e6:7.1f} {peak:17.0f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
