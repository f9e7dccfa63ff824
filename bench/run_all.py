"""Runs every bench/bench_*.py in turn (as `python -m bench.NAME`) and prints their figures (`make bench`).

Benchmarks measure speed and memory as ratios within one run, since the machines are shared and noisy.
Pass --quick to ask each benchmark for a short run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.common import description

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__),
                                     epilog="Other options are passed to every benchmark.")
    parser.add_argument("--quick", action="store_true", help="ask each benchmark for a short run")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="just these benchmarks (bench_storm or storm)")
    args, extra = parser.parse_known_args()
    if args.quick:
        extra = ["--quick", *extra]
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {n.removeprefix("bench_").removesuffix(".py") for n in args.only}
        unknown = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    failed = []
    for script in scripts:
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
