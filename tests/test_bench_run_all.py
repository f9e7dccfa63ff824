"""`make bench`'s runner: its own --help (it passed --help to every benchmark, which ran them all) and --only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_all(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.run_all", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_help_is_its_own_and_runs_nothing() -> None:
    result = run_all("--help")
    assert result.returncode == 0
    assert "--only" in result.stdout and "===" not in result.stdout


def test_an_unknown_benchmark_is_named() -> None:
    result = run_all("--only", "storm", "nope")
    assert result.returncode == 2 and "no such benchmark: nope" in result.stderr
    assert "===" not in result.stdout
