"""A dashboard's refresh at a city's scale: everything again against only what changed (`since_token`).

A city's year is ~100,000 defects and a fleet's day tens of thousands of driven lines; every open dashboard
refreshes every 30 s. The bench seeds that map, lets a busy fleet write for a while (defects sighted again, lines
driven), and times and weighs what a tab fetches: the whole map, as at sign-in, against what was written since the
last answer's `sync_token`, as each refresh now asks.

    python -m bench.bench_refresh [--defects 100000] [--lines 20000] [--quick]
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from bench.bench_export import api_process
from bench.bench_server import CENTRE, fresh_database, seed_map
from bench.common import description
from roadmon_contract.ids import uuid7
from scripts import services
from tests.server_fixtures import offset

PAGE = 5000  # the dashboard's page size


def seed_lines(dsn: str, lines: int, rng: random.Random) -> None:
    """LINES driven stretches of ~200 m over the last day."""
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY coverage (coverage_id, device_id, started_at, ended_at, received_at, line, "
                      "detector_active, payload) FROM STDIN") as copy:
            for i in range(lines):
                north, east = rng.uniform(-30_000, 30_000), rng.uniform(-30_000, 30_000)
                points = [offset(*CENTRE, north + 20 * k, east) for k in range(11)]
                line = "SRID=4326;LINESTRING(" + ", ".join(f"{lon} {lat}" for lat, lon in points) + ")"
                ended = now - timedelta(hours=23 * i / lines + 1)
                copy.write_row((uuid7(), f"veh-{i % 500}", ended - timedelta(seconds=30), ended, ended, line, True,
                                "{}"))
        conn.execute("ANALYZE coverage")


def busy_fleet(dsn: str, sighted: int, new_lines: int, rng: random.Random) -> None:
    """What a fleet writes between two refreshes: SIGHTED defects seen again, NEW_LINES lines driven."""
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        ids = rng.sample(range(1, cur.execute("SELECT max(id) FROM defects").fetchone()[0] + 1), sighted)
        cur.execute("UPDATE defects SET last_seen = now(), sighting_count = sighting_count + 1 WHERE id = ANY(%s)",
                    (ids,))
        with cur.copy("COPY coverage (coverage_id, device_id, started_at, ended_at, received_at, line, "
                      "detector_active, payload) FROM STDIN") as copy:
            for i in range(new_lines):
                lat, lon = offset(*CENTRE, rng.uniform(-30_000, 30_000), rng.uniform(-30_000, 30_000))
                copy.write_row((uuid7(), f"veh-{i}", now - timedelta(seconds=40), now, now,
                                f"SRID=4326;LINESTRING({lon} {lat}, {lon + 0.002} {lat})", True, "{}"))


def fetch(client: httpx.Client, path: str, params: dict) -> tuple[float, int, int, str]:
    """Every page of PATH, as the dashboard pages: seconds, bytes, features, and the smallest sync_token."""
    t0, size, count, cursor, token = time.monotonic(), 0, 0, None, None
    while True:
        answer = client.get(path, params={**params, **({"cursor": cursor} if cursor is not None else {})})
        answer.raise_for_status()
        body = answer.json()
        size += len(answer.content)
        count += len(body["features"])
        token = min(token or body["sync_token"], body["sync_token"], key=lambda t: int(t.rsplit(".", 1)[1]))
        cursor = body["next_cursor"]
        if cursor is None:
            return time.monotonic() - t0, size, count, token


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--defects", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=20_000, help="driven lines in the last day")
    parser.add_argument("--sighted", type=int, default=300, help="defects sighted again between two refreshes")
    parser.add_argument("--quick", action="store_true", help="20,000 defects, 5,000 lines")
    args = parser.parse_args()
    if args.quick:
        args.defects, args.lines = 20_000, 5_000
    info = services.up()
    tmp = services.STATE / "bench-refresh"
    shutil.rmtree(tmp, ignore_errors=True)
    dsn = fresh_database("bench_refresh")
    rng = random.Random(7)
    t0 = time.monotonic()
    seed_map(dsn, args.defects, 1, rng)
    seed_lines(dsn, args.lines, rng)
    print(f"seeded {args.defects} defects and {args.lines} driven lines in {time.monotonic() - t0:.1f} s")
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    with api_process(dsn, info, tmp) as (base, headers, _api), \
            httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        whole = {"defects": fetch(client, "/defects", {"limit": PAGE}),
                 "roads driven": fetch(client, "/coverage", {"since": since})}
        busy_fleet(dsn, args.sighted, args.sighted, rng)
        print(f"between two refreshes: {args.sighted} defects sighted again, {args.sighted} lines driven")
        print(f"{'what a tab fetches':<26} {'whole: s':>9} {'MB':>7} {'items':>7} {'changes: s':>11} {'MB':>7} "
              f"{'items':>7} {'bytes':>7}")
        for what, (seconds, size, count, sync) in whole.items():
            path, params = ("/defects", {"limit": PAGE}) if what == "defects" else ("/coverage", {"since": since})
            c_seconds, c_size, c_count, _ = fetch(client, path, {**params, "since_token": sync})
            print(f"{what:<26} {seconds:9.2f} {size / 1e6:7.1f} {count:7d} {c_seconds:11.3f} {c_size / 1e6:7.2f} "
                  f"{c_count:7d} {size / max(c_size, 1):6.0f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
