"""Acceptance of the perception pipeline (issue 4) at small scale, with the bundled model on a rendered drive.

A simulated drive with 3 m GNSS noise at 1 Hz (the `white` model: an independent Gaussian error each epoch,
the synthetic receiver the GNSS and perception issues define) is replayed through `edge-agent replay`; its
events are matched to the true potholes within 5 m. The issue's literal targets are asserted, with no excuse:
precision >= 0.9 (a second event for one defect is a false positive), recall >= 0.85, median geolocation error
<= 2.0 m. The camera side is also judged on its own, with each event moved back by its vehicle's GNSS error
(edge_agent.lab.drive_eval.without_gnss_error): median <= 1.0 m. bench/bench_pipeline.py runs the same on a longer
drive, and also with the `drift` model (a real receiver's slowly wandering error, which one pass cannot
average out).

Per class: the pothole targets are judged on pothole events only; cracks (5 of the drive's 15 defects) are judged
the same way with targets of their own, and line-shaped ones must come out as lines (width well below length, an
orientation; an alligator patch is an area), once the bundled model has a `crack` class (skipped, saying so,
before). tests/test_crack_events.py runs the crack pipeline with the simulator's own boxes, whatever the model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.lab.drive_eval import TruthTrack, crack_truth, score, score_by_class, true_defects, without_gnss_error
from roadmon_contract.geodesy import distance_m
from roadmon_contract.status import SPARSE_FRAMES_M
from roadmon_contract.validate import errors

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "models" / "bundled" / "model.onnx"
EDGE_AGENT = Path(sys.executable).with_name("edge-agent")
# The drive judged (seed 7, `seed7_drive` in tests/conftest.py) has 10 potholes and 5 cracks: one false alarm
# (10/11) or one miss (9/10) more still meets the targets, so the verdict does not hang on a single box of a
# slightly different runtime.


def edge_agent(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGE_AGENT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def replayed(seed7_drive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The seed-7 drive (tests/conftest.py: `edge-agent sim drive --seed 7 --minutes 0.75 --gps-noise-m 3
    --gps-noise-model white --nmea-hz 1 --defects 15 --fps 15`, shared with test_crack_events) replayed with the
    bundled model. Returns the folder of the drive's files and its events' outbox, and the replay's summary."""
    if not BUNDLED.exists():
        pytest.skip("the bundled model (models/bundled/model.onnx) is not there yet")
    drive = tmp_path_factory.mktemp("drive")
    for name in ("video.mp4", "drive.nmea", "agent.toml", "drive.json", "truth.csv", "defects.geojson"):
        (drive / name).symlink_to(seed7_drive / name)
    out = edge_agent("replay", "--video", str(drive / "video.mp4"), "--nmea", str(drive / "drive.nmea"),
                     "--config", str(drive / "agent.toml"), "--outbox", str(drive / "outbox.db"), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return drive, json.loads(out.stdout.strip().splitlines()[-1])


def stored_events(outbox: Path) -> list[dict]:
    from edge_agent.link.outbox import Outbox

    with Outbox(outbox) as box:
        return [event for _, event in box.iter_events()]


def test_camera_side_finds_each_pothole_once_in_place(replayed: tuple[Path, dict]) -> None:
    drive, summary = replayed
    events = stored_events(drive / "outbox.db")
    assert summary["events"] == len(events) > 0
    assert summary["frames"] == summary["video_frames"] and summary["dropped"] == 0
    truth = TruthTrack(drive / "truth.csv")
    potholes = [e for e in events if e["class"] == "pothole"]
    result = score(without_gnss_error(potholes, truth), true_defects(drive / "defects.geojson"), radius_m=5.0)
    print("camera side:", json.dumps(result.as_dict()), json.dumps(summary))
    assert result.precision >= 0.9, result
    assert result.recall >= 0.85, result
    assert result.median_error_m is not None and result.median_error_m <= 1.0, result


def test_issue_acceptance_end_to_end(replayed: tuple[Path, dict]) -> None:
    drive, _ = replayed
    assert json.loads((drive / "drive.json").read_text())["gps_noise_model"] == "white"
    events = [e for e in stored_events(drive / "outbox.db") if e["class"] == "pothole"]
    truth, potholes = TruthTrack(drive / "truth.csv"), true_defects(drive / "defects.geojson")
    result = score(events, potholes, radius_m=5.0, truth=truth)
    print("end to end:", json.dumps(result.as_dict()))
    assert result.precision >= 0.9, result
    assert result.recall >= 0.85, result
    assert result.median_error_m is not None and result.median_error_m <= 2.0, result


def test_replayed_events_and_coverage_are_valid(replayed: tuple[Path, dict]) -> None:
    drive, summary = replayed
    events = stored_events(drive / "outbox.db")
    assert all(errors("event", e) == [] for e in events), [errors("event", e) for e in events][:3]
    assert [e["seq"] for e in events] == list(range(events[0]["seq"], events[0]["seq"] + len(events)))
    assert summary["coverage_records"] >= 1
    start = json.loads((drive / "drive.json").read_text())["start_utc"]
    assert all(e["captured_at"] >= start.replace("+00:00", "Z")[:19] for e in events)


def bundled_classes() -> tuple[str, ...]:
    from edge_agent.config.detector import DetectorConfig
    from edge_agent.detect.detector import load_detector

    return tuple(load_detector(DetectorConfig(model="bundled")).info.classes)


def test_cracks_found_once_in_place_as_lines(replayed: tuple[Path, dict]) -> None:
    if "crack" not in bundled_classes():
        pytest.skip("the bundled model has no `crack` class yet: it cannot find the drive's cracks")
    drive, _ = replayed
    events = stored_events(drive / "outbox.db")
    truth = TruthTrack(drive / "truth.csv")
    result = score_by_class(events, drive / "defects.geojson", truth=truth)["crack"]
    print("cracks end to end:", json.dumps(result.as_dict()))
    # 5 cracks: one miss or one false alarm is 0.8.
    assert result.defects == 5 and result.precision >= 0.8 and result.recall >= 0.8, result
    assert result.median_error_m is not None and result.median_error_m <= 2.0, result
    cracks = crack_truth(drive / "defects.geojson")
    for event in without_gnss_error([e for e in events if e["class"] == "crack"], truth):
        near = min(cracks, key=lambda c: distance_m(event["position"]["lat"], event["position"]["lon"], c["lat"],
                                                     c["lon"]))
        size = event["size_m"]
        if near["width_m"] < 0.5 * near["length_m"]:  # a line, not an alligator patch (an area: no orientation)
            assert "orientation_deg" in size, event["size_m"]
            assert size["width"] < 0.6 * size["length"], (size, near)


@pytest.mark.parametrize(("fps", "sparse"), [(2, False), (1, True)])
def test_a_slow_box_at_speed_still_finds_the_potholes_or_says_why_not(tmp_path: Path, fps: int,
                                                                      sparse: bool) -> None:
    """A drive processed at 2 frames a second (a frame every ~4 m: a Pi at highway speed) finds the potholes (2
    of these 7 before two views metres apart could confirm a track); at 1 a second (~8 m apart) replay says the
    frames are too far apart for the tracker."""
    if not BUNDLED.exists():
        pytest.skip("the bundled model (models/bundled/model.onnx) is not there yet")
    drive = tmp_path / "drive"
    sim = edge_agent("sim", "drive", "--out", str(drive), "--seed", "1", "--minutes", "0.75", "--gps-noise-m", "3",
                     "--nmea-hz", "1", "--defects", "10", "--potholes", "7", "--fps", str(fps))
    assert sim.returncode == 0, sim.stderr[-3000:]
    out = edge_agent("replay", "--video", str(drive / "video.mp4"), "--nmea", str(drive / "drive.nmea"),
                     "--config", str(drive / "agent.toml"), "--outbox", str(drive / "outbox.db"), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["m_per_frame"] > SPARSE_FRAMES_M) == sparse, summary
    assert ("frames processed while driving were more than" in out.stderr) == sparse, out.stderr[-2000:]
    assert (summary["sparse_share"] >= 0.75) == sparse, summary
    if not sparse:
        got = score_by_class(stored_events(drive / "outbox.db"), drive / "defects.geojson",
                             truth=TruthTrack(drive / "truth.csv"))["pothole"]
        assert got.precision >= 0.9 and got.recall >= 0.85, got


def test_a_camera_that_repeats_frames_is_read_as_the_frames_it_really_took(tmp_path: Path) -> None:
    """Each frame of a 5 fps drive written three times into a 15 fps video (a stalled camera; a video made
    constant-rate by repeating frames): the repeats, seen while the vehicle drove on, are skipped, so the
    metres per frame are the real ones and the events those of the drive itself."""
    import cv2

    if not BUNDLED.exists():
        pytest.skip("the bundled model (models/bundled/model.onnx) is not there yet")
    drive = tmp_path / "drive"
    sim = edge_agent("sim", "drive", "--out", str(drive), "--seed", "1", "--minutes", "0.75", "--gps-noise-m", "0",
                     "--defects", "10", "--potholes", "7", "--fps", "5")
    assert sim.returncode == 0, sim.stderr[-3000:]
    stutter = tmp_path / "stutter"
    stutter.mkdir()
    cap = cv2.VideoCapture(str(drive / "video.mp4"))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    height, width = frames[0].shape[:2]
    out = cv2.VideoWriter(str(stutter / "video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (width, height))
    for frame in frames:
        for _ in range(3):
            out.write(frame)
    out.release()
    meta = json.loads((drive / "drive.json").read_text()) | {"fps": 15.0, "frames": 3 * len(frames)}
    (stutter / "drive.json").write_text(json.dumps(meta))
    summaries = {}
    for folder in (drive, stutter):
        done = edge_agent("replay", "--video", str(folder / "video.mp4"), "--nmea", str(drive / "drive.nmea"),
                          "--config", str(drive / "agent.toml"), "--outbox", str(folder / "outbox.db"), "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        summaries[folder.name] = json.loads(done.stdout.strip().splitlines()[-1])
    real, repeated = summaries["drive"], summaries["stutter"]
    assert real["frames_repeated"] == 0
    assert repeated["frames_repeated"] >= 0.4 * 2 * len(frames), repeated   # copies while driving 0.5 m or more
    assert repeated["m_per_frame"] == pytest.approx(real["m_per_frame"], rel=0.2)   # not a third of it
    assert repeated["events"] == real["events"] > 0
