"""Runs every bench/bench_*.py in turn (as `python -m bench.NAME`) and prints their figures (`make bench`).

Benchmarks measure speed and memory as ratios within one run, since the machines are shared and noisy.
Pass --quick to ask each benchmark for a short run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    extra = sys.argv[1:]
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", f"bench.{script.stem}", *extra], cwd=HERE.parent).returncode
        print(f"--- {script.name}: exit {rc}, {time.monotonic() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
