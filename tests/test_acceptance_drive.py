"""Acceptance of the perception pipeline (issue 4) at small scale, with the bundled model on a rendered drive.

A simulated drive with 3 m GNSS noise at 1 Hz is replayed through `edge-agent replay`; its events are matched
to the true potholes within 5 m. Precision >= 0.9 (a second event for one defect is a false positive),
recall >= 0.85, median geolocation error <= 2.0 m. bench/bench_pipeline.py runs the same on a longer drive.

The simulator's GNSS error wanders slowly like a real receiver's (most of its variance has a 45 s time
constant), so over the seconds a defect is in view it is a near-constant offset that no pipeline removes from
one pass. The camera side is therefore also judged with each event moved back by its vehicle's GNSS error
(edge_agent.drive_eval.without_gnss_error): that part must meet the targets on every drive. The literal
end-to-end figures must meet them too, unless the drive's GNSS error alone at the events already exceeds the
budget; then the test is marked xfail with the figures, never silently passed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.drive_eval import TruthTrack, score, true_defects, without_gnss_error
from roadmon_contract.validate import errors

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "bundled" / "model.onnx"
EDGE_AGENT = Path(sys.executable).with_name("edge-agent")
SEED = 4
GNSS_SHARE_OF_BUDGET_M = 1.5   # of the 2.0 m median budget, what the vehicle position may use up


def edge_agent(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGE_AGENT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if not BUNDLED.exists():
        pytest.skip("the bundled model (models/bundled/model.onnx) is not there yet")
    drive = tmp_path_factory.mktemp("drive")
    sim = edge_agent("sim", "drive", "--out", str(drive), "--seed", str(SEED), "--minutes", "0.75",
                     "--gps-noise-m", "3", "--nmea-hz", "1", "--defects", "10", "--fps", "15")
    if sim.returncode != 0 and "No such command" in sim.stderr + sim.stdout:
        pytest.skip("`edge-agent sim drive` is not there yet")
    assert sim.returncode == 0, sim.stderr[-3000:]
    out = edge_agent("replay", "--video", str(drive / "video.mp4"), "--nmea", str(drive / "drive.nmea"),
                     "--config", str(drive / "agent.toml"), "--outbox", str(drive / "outbox.db"), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return drive, json.loads(out.stdout.strip().splitlines()[-1])


def stored_events(outbox: Path) -> list[dict]:
    from edge_agent.outbox import Outbox

    with Outbox(outbox) as box:
        return [event for _, event in box.iter_events()]


def test_camera_side_finds_each_pothole_once_in_place(replayed: tuple[Path, dict]) -> None:
    drive, summary = replayed
    events = stored_events(drive / "outbox.db")
    assert summary["events"] == len(events) > 0
    assert summary["frames"] == summary["video_frames"] and summary["dropped"] == 0
    truth = TruthTrack(drive / "truth.csv")
    result = score(without_gnss_error(events, truth), true_defects(drive / "defects.geojson"), radius_m=5.0)
    print("camera side:", json.dumps(result.as_dict()), json.dumps(summary))
    assert result.precision >= 0.9, result
    assert result.recall >= 0.85, result
    assert result.median_error_m is not None and result.median_error_m <= 1.0, result


def test_issue_acceptance_end_to_end(replayed: tuple[Path, dict]) -> None:
    drive, _ = replayed
    events = stored_events(drive / "outbox.db")
    truth, potholes = TruthTrack(drive / "truth.csv"), true_defects(drive / "defects.geojson")
    result = score(events, potholes, radius_m=5.0, truth=truth)
    camera = score(without_gnss_error(events, truth), potholes, radius_m=5.0, truth=truth)
    print("end to end:", json.dumps(result.as_dict()))
    met = result.precision >= 0.9 and result.recall >= 0.85 \
        and result.median_error_m is not None and result.median_error_m <= 2.0
    camera_met = camera.precision >= 0.9 and camera.recall >= 0.85
    # Only a drive whose camera side is right and whose GNSS alone is off by more than the budget is excused.
    if not met and camera_met and camera.gnss_median_m is not None \
            and camera.gnss_median_m > GNSS_SHARE_OF_BUDGET_M:
        pytest.xfail(f"the drive's filtered GNSS position alone is {camera.gnss_median_m:.2f} m off at the events "
                     f"(median); end to end: precision {result.precision:.2f}, recall {result.recall:.2f}, "
                     f"median error {result.median_error_m} m")
    assert met, result


def test_replayed_events_and_coverage_are_valid(replayed: tuple[Path, dict]) -> None:
    drive, summary = replayed
    events = stored_events(drive / "outbox.db")
    assert all(errors("event", e) == [] for e in events), [errors("event", e) for e in events][:3]
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))
    assert summary["coverage_records"] >= 1
    start = json.loads((drive / "drive.json").read_text())["start_utc"]
    assert all(e["captured_at"] >= start.replace("+00:00", "Z")[:19] for e in events)
