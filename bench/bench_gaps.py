"""Defects seen without a fix: a GNSS gap in the middle of a drive, and a cold start, through `edge-agent replay`.

For each seed a 45 s drive is rendered (`edge-agent sim drive`, 10 defects, 3 m white GNSS noise at 1 Hz); its NMEA
is then cut: `tunnel` leaves out the epochs from 15 s to 23 s of the video (the receiver silent for 8 s), `cold`
every epoch before 8 s (the first fix comes 8 s into the drive). Each variant is replayed with the bundled model
twice: as shipped (a track seen in the gap waits `events.hold_for_fix_s` for the fix after it) and with
`hold_for_fix_s = 0` (placed at once: dead reckoning, or nothing before a first fix). Scored per variant, over
all seeds and both classes: the defects the vehicle passed inside the cut window (found within 5 m, median
error) and the whole drive (precision, recall, median error). The uncut drive is the reference.

Usage: python -m bench.bench_gaps [--seeds 1-4]
Exit code 1 when holding finds fewer of the defects in the windows than placing at once, 2 when the bench cannot
run (no bundled model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.bench_seeds import BUNDLED, EDGE_AGENT, run, seed_list
from bench.common import description

WINDOWS = {"tunnel": (15.0, 23.0), "cold": (-60.0, 8.0)}  # seconds of video time without any NMEA epoch
SEE_BEFORE_S = 2.0  # a defect is in view a second or two before the vehicle passes it


def render(seed: int, folder: Path) -> None:
    sim = run([str(EDGE_AGENT), "sim", "drive", "--out", str(folder), "--seed", str(seed), "--minutes", "0.75",
               "--defects", "10", "--potholes", "7", "--gps-noise-m", "3"])
    if sim.returncode != 0:
        raise RuntimeError(f"sim drive seed {seed}: {sim.stderr[-2000:]}")


def cut_nmea(source: Path, dest: Path, start_utc: datetime, window: tuple[float, float]) -> int:
    """Copy SOURCE without the epochs whose time lies in WINDOW (seconds after START_UTC); returns epochs cut."""
    lo, hi = (start_utc + timedelta(seconds=s) for s in window)
    kept, cut, skipping = [], 0, False
    for line in source.read_text(encoding="ascii").splitlines():
        if line.startswith("$GPRMC"):  # the simulator starts each epoch with its RMC
            hhmmss = line.split(",")[1]
            t = start_utc.replace(hour=int(hhmmss[:2]), minute=int(hhmmss[2:4]), second=int(hhmmss[4:6]),
                                  microsecond=0)
            skipping = lo <= t < hi
            cut += skipping
        if not skipping:
            kept.append(line)
    dest.write_text("\n".join(kept) + "\n", encoding="ascii")
    return cut


def replay(folder: Path, nmea: Path, hold_s: float | None, tag: str) -> list[dict]:
    from edge_agent.link.outbox import Outbox

    config = folder / "agent.toml"
    if hold_s is not None:
        config = folder / f"agent-{tag}.toml"
        text = (folder / "agent.toml").read_text(encoding="utf-8")
        if "[events]" in text:
            raise RuntimeError(f"{folder / 'agent.toml'} has an [events] section: merge hold_for_fix_s by hand")
        config.write_text(text + f"\n[events]\nhold_for_fix_s = {hold_s}\n", encoding="utf-8")
    outbox = folder / f"outbox-{tag}.db"
    outbox.unlink(missing_ok=True)
    result = run([str(EDGE_AGENT), "replay", "--video", str(folder / "video.mp4"), "--nmea", str(nmea),
                  "--config", str(config), "--outbox", str(outbox), "--json"])
    if result.returncode != 0:
        raise RuntimeError(f"replay {folder.name} {tag}: {result.stderr[-2000:]}")
    with Outbox(outbox) as box:
        return [event for _, event in box.iter_events()]


def passed_in(folder: Path, window: tuple[float, float]) -> list[tuple[float, float]]:
    """The true defects (lat, lon) the vehicle passes (comes closest to) within WINDOW, seen from SEE_BEFORE_S
    before it."""
    from edge_agent.lab.drive_eval import TruthTrack, true_defects
    from roadmon_contract.geodesy import distances_m

    truth = TruthTrack(folder / "truth.csv")
    out = []
    for lat, lon in true_defects(folder / "defects.geojson", ("pothole", "crack")):
        closest = float(truth.t[int(distances_m(lat, lon, truth.lat, truth.lon).argmin())])
        if window[0] <= closest - SEE_BEFORE_S and closest < window[1] + SEE_BEFORE_S:
            out.append((lat, lon))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--seeds", default="1-4", help="seeds, '1-4' or '1,3'")
    args = parser.parse_args()
    if not BUNDLED.exists():
        print("bench_gaps: no bundled model (models/bundled/model.onnx)", file=sys.stderr)
        return 2
    from edge_agent.lab.drive_eval import score, true_defects

    rows: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seed_list(args.seeds):
            folder = Path(tmp) / f"seed{seed}"
            render(seed, folder)
            start = datetime.fromisoformat(json.loads((folder / "drive.json").read_text())["start_utc"]
                                           .replace("Z", "+00:00")).astimezone(UTC)
            everything = true_defects(folder / "defects.geojson", ("pothole", "crack"))
            cases = [("uncut", folder / "drive.nmea", None, everything)]
            for name, window in WINDOWS.items():
                nmea = folder / f"{name}.nmea"
                cut_nmea(folder / "drive.nmea", nmea, start, window)
                inside = passed_in(folder, window)
                cases += [(f"{name}, held", nmea, None, inside), (f"{name}, at once", nmea, 0.0, inside)]
            for label, nmea, hold_s, inside in cases:
                events = replay(folder, nmea, hold_s, label.replace(", ", "-").replace(" ", "_"))
                whole = score(events, everything)
                window_score = score(events, inside) if inside else None
                row = rows.setdefault(label, {"events": [], "defects": [], "matched": [], "errors": [],
                                              "in_window": [], "found_in_window": [], "window_errors": []})
                row["events"].append(whole.events)
                row["defects"].append(whole.defects)
                row["matched"].append(whole.matched)
                row["errors"] += whole.errors_m
                row["in_window"].append(len(inside))
                row["found_in_window"].append(window_score.matched if window_score else 0)
                row["window_errors"] += window_score.errors_m if window_score else ()
                print(f"seed {seed} {label:<16} events {whole.events:3d} matched {whole.matched:3d}/{whole.defects} "
                      f"in window {row['found_in_window'][-1]}/{len(inside)}", flush=True)
    print(f"\n{'case':<16} {'in window found':>15} {'median m':>8} {'precision':>9} {'recall':>6} {'median m':>8}")
    for label, row in rows.items():
        window = f"{sum(row['found_in_window'])}/{sum(row['in_window'])}" if label != "uncut" else "-"
        window_median = statistics.median(row["window_errors"]) if row["window_errors"] else float("nan")
        events, matched = sum(row["events"]), sum(row["matched"])
        print(f"{label:<16} {window:>15} {window_median:8.2f} {matched / max(events, 1):9.2f} "
              f"{matched / max(sum(row['defects']), 1):6.2f} {statistics.median(row['errors']):8.2f}")
    failed = [name for name in WINDOWS
              if sum(rows[f"{name}, held"]["found_in_window"]) < sum(rows[f"{name}, at once"]["found_in_window"])]
    for name in failed:
        print(f"FAILED {name}: holding found fewer defects in the window than placing at once")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
