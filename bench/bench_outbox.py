"""Outbox insert rate with synchronous FULL against NORMAL (same run, same events), then the crash-safety
test with more SIGKILLs than the test suite uses.

    python -m bench.bench_outbox [--quick] [--events N] [--kills N] [--no-crash]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import description
from edge_agent.config.outbox import OutboxConfig
from edge_agent.link.outbox import Outbox
from tests.test_outbox import make_event

ROOT = Path(__file__).resolve().parent.parent


def insert_rate(path: Path, mode: str, events: list[dict]) -> float:
    with Outbox(path, OutboxConfig(synchronous=mode)) as ob:
        t0 = time.monotonic()
        for event in events:
            ob.add_event(event)
        return len(events) / (time.monotonic() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--quick", action="store_true", help="fewer events and kills")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--no-crash", action="store_true", help="only the insert rates")
    args = parser.parse_args()
    n = args.events or (500 if args.quick else 3000)
    kills = args.kills or (100 if args.quick else 400)

    folder = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    with Outbox(folder / "ids.db") as ids:
        rounds = []
        for _ in range(2):  # two rounds each, alternating, so that a busy moment hurts both modes alike
            for mode in ("FULL", "NORMAL"):
                events = [make_event(ids, severity=0.5, thumbnail_jpeg_b64="T" * 3000) for _ in range(n)]
                rounds.append((mode, insert_rate(folder / f"{mode}-{len(rounds)}.db", mode, events)))
    shutil.rmtree(folder, ignore_errors=True)  # tens of MB of queues
    rates = {m: sum(r for mm, r in rounds if mm == m) / 2 for m in ("FULL", "NORMAL")}
    for mode, rate in rounds:
        print(f"insert {mode:6s}: {rate:8.0f} events/s ({n} events with 3 kB thumbnails)")
    print(f"RESULT insert rate FULL {rates['FULL']:.0f}/s, NORMAL {rates['NORMAL']:.0f}/s, "
          f"FULL/NORMAL = {rates['FULL'] / rates['NORMAL']:.2f}")

    if args.no_crash:
        return 0
    print(f"\ncrash safety with {kills} SIGKILLs (tests/test_crash_safety.py)", flush=True)
    env = dict(os.environ, ROADMON_CRASH_KILLS=str(kills))
    t0 = time.monotonic()
    rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                         "tests/test_crash_safety.py"], cwd=ROOT, env=env).returncode
    print(f"RESULT crash safety: {'passed' if rc == 0 else 'FAILED'} with {kills} kills "
          f"in {time.monotonic() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
