"""Golden tests: every real capture in ../shared/nmea replayed through parser, epochs and filter.

The expected output of each capture lives in tests/golden/nmea/<capture>.jsonl: a header line (counts and a
digest of every epoch) and a sample of epochs (all of them for short captures; every k-th plus every mode change
and filter reset for long ones), in the `edge-agent gps replay --json` format with the epoch's index `i`.
Regenerate after a deliberate change with `ROADMON_REGOLD=1 pytest tests/test_gnss_golden.py`, then review the
diff before committing it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from pathlib import Path

import pytest

from edge_agent.commands.gps import fix_record, replay_records
from edge_agent.config.gnss import GnssConfig
from edge_agent.gnss.source import NmeaDecoder, open_input

GOLDEN = Path(__file__).parent / "golden" / "nmea"
REGOLD = os.environ.get("ROADMON_REGOLD") == "1"
MAX_SAMPLES = 300
CAPTURE_SUFFIXES = (".nmea", ".log")


def replay(path: Path) -> tuple[list[dict], dict]:
    cfg = GnssConfig(source="file", file=str(path), realtime=False)
    decoder = NmeaDecoder(cfg, virtual_clock=True)
    with open_input(path) as stream:
        records = [fix_record(fix, pose) for fix, pose in replay_records(stream, cfg, decoder)]
    return records, decoder.summary()


def coarse(record: dict) -> dict:
    """Rounded so that the digest does not depend on the last bits of the floating point."""
    def squash(value):
        if isinstance(value, float):
            return round(value, 5)
        if isinstance(value, dict):
            return {k: squash(v) for k, v in value.items()}
        return value
    return squash(record)


def golden_lines(name: str, records: list[dict], summary: dict) -> list[str]:
    digest = hashlib.sha256("\n".join(json.dumps(coarse(r), sort_keys=True) for r in records).encode()).hexdigest()
    stride = max(1, math.ceil(len(records) / MAX_SAMPLES))
    header = {"capture": name, "summary": summary, "epochs": len(records), "stride": stride, "sha256": digest}
    lines = [json.dumps(header, sort_keys=True)]
    previous_mode = None
    for i, record in enumerate(records):
        state = (record["filtered"] or {}).get("state")
        if i % stride == 0 or record["mode"] != previous_mode or state == "reset" or i == len(records) - 1:
            lines.append(json.dumps({"i": i, **record}, sort_keys=True))
        previous_mode = record["mode"]
    return lines


def close_enough(expected: str, actual: str) -> bool:
    a, b = json.loads(expected), json.loads(actual)
    if a.keys() != b.keys():
        return False
    if "sha256" in a:
        return a == b
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict) and isinstance(y, dict):
            if not close_enough(json.dumps(x), json.dumps(y)):
                return False
        elif isinstance(x, float) and isinstance(y, float | int):
            if not math.isclose(x, y, rel_tol=0, abs_tol=1e-6):
                return False
        elif x != y:
            return False
    return True


def golden_names() -> list[str]:
    return sorted(p.name.removesuffix(".jsonl") for p in GOLDEN.glob("*.jsonl"))


def test_every_capture_has_a_golden_file(shared_nmea):
    captures = sorted(p.name for p in shared_nmea.iterdir() if p.name.endswith(CAPTURE_SUFFIXES))
    if REGOLD:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name in captures:
            records, summary = replay(shared_nmea / name)
            (GOLDEN / f"{name}.jsonl").write_text("\n".join(golden_lines(name, records, summary)) + "\n")
    missing = [name for name in captures if not (GOLDEN / f"{name}.jsonl").exists()]
    assert not missing, f"no golden file for {missing}: run ROADMON_REGOLD=1 pytest {__file__} and review it"


@pytest.mark.parametrize("name", golden_names())
def test_capture_matches_its_golden_file(shared_nmea, name):
    capture = shared_nmea / name
    if not capture.exists():
        pytest.skip(f"capture {name} is not in ../shared/nmea")
    records, summary = replay(capture)
    actual = golden_lines(name, records, summary)
    expected = (GOLDEN / f"{name}.jsonl").read_text().splitlines()
    if len(actual) == len(expected) and all(close_enough(e, a) for e, a in zip(expected, actual, strict=True)):
        return
    diff = list(difflib.unified_diff(expected, actual, "golden", "now", n=0, lineterm=""))
    shown = "\n".join(diff[:80]) + (f"\n... {len(diff) - 80} more diff lines" if len(diff) > 80 else "")
    pytest.fail(f"{name} differs from tests/golden/nmea/{name}.jsonl (if intended: ROADMON_REGOLD=1, review, "
                f"commit):\n{shown}", pytrace=False)


def test_replay_never_emits_invalid_values_on_captures(shared_nmea):
    for capture in sorted(shared_nmea.iterdir()):
        if not capture.name.endswith(CAPTURE_SUFFIXES):
            continue
        records, _ = replay(capture)
        for record in records:
            assert record["mode"] in (0, 2, 3)
            if record["lat"] is not None:
                assert -90 <= record["lat"] <= 90 and -180 <= record["lon"] <= 180
            filtered = record["filtered"]
            if filtered:
                assert filtered["state"] in ("ok", "predicting", "stale", "reset")
                assert math.isfinite(filtered["lat"]) and math.isfinite(filtered["h_std_m"])
