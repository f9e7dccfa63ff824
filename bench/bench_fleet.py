"""Map quality of the fleet server, measured with the fleet simulator (fleet_sim) against the real ingest.

Starts the project-local PostGIS and Mosquitto (scripts/services.py), a fresh database, `fleet-server ingest`
as its own process, provisions the simulated vehicles (devices rows and broker logins), runs the simulator over
simulated days (each vehicle with its own MQTT 5 login and outbox: re-sent until the server acks), reads the
server's defects back after every simulated half hour, and prints the map-quality table (docs/fleet_sim.md).

`--detector real-frames` gives the simulated vehicles the bundled model's per-pass recall and false events as
measured on real survey frames (bench/bench_real_frames.py) instead of on rendered drives.

Usage: python -m bench.bench_fleet [--vehicles 60] [--days 8] [--seed 1] [--quick] [--json-out FILE]
                                  [--detector rendered|real-frames]
                                  [--set aggregate.repair_chance=0.005 ...]   (server settings for the run)
Exit code 0 when it ran (goals are reported, not enforced), 1 when messages stayed unacked, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import tomli_w

from bench.bench_server import fresh_database
from bench.common import description, parse_settings
from fleet_sim.calibration import REAL_FRAMES_FP_PER_KM, REAL_FRAMES_P_DETECT, DetectionParams
from fleet_sim.defects import DAY_S
from fleet_sim.provision import provision, remove_logins
from fleet_sim.report import goals, print_report
from fleet_sim.runner import Runner
from fleet_sim.world import World, WorldParams
from scripts import services

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench_fleet")


def server_config(folder: Path, dsn: str, info: dict, settings: dict[str, dict[str, object]] | None = None) -> Path:
    """The ingest process's config; SETTINGS (from --set) go over it section by section."""
    (folder / "dsn").write_text(dsn)
    (folder / "mqtt-password").write_text(info["server_password"])
    config: dict[str, dict[str, object]] = {
        "database": {"dsn_file": str(folder / "dsn")},
        "mqtt": {"host": info["mqtt_host"], "port": info["mqtt_port"], "username": info["server_user"],
                 "password_file": str(folder / "mqtt-password"),
                 "client_id_prefix": f"fleet-bench-{secrets.token_hex(3)}"},
        "ingest": {"share_group": f"fleetbench{secrets.token_hex(3)}"},
        "models": {"dir": str(folder / "models")},
        # 8 simulated days pass in about a minute: the detection curve is learned again every wall second
        # (a few simulated hours; the default 10 minutes of a real fleet would never come round here).
        "aggregate": {"detection_curve_refresh_s": 1.0},
    }
    for section, values in (settings or {}).items():
        config.setdefault(section, {}).update(values)
    cfg = folder / "server.toml"
    cfg.write_text(tomli_w.dumps(config))
    return cfg


def named_blind(runner: Runner, blind: list[str]) -> dict[str, object]:
    """Which vehicles the server named `finds_nothing` during the run: the BLIND ones (after how many simulated
    days) and any healthy one (a false alarm)."""
    named = runner.named_blind
    return {"blind": len(blind), "named": sum(d in named for d in blind),
            "days_to_name": sorted(round(named[d] / DAY_S, 2) for d in blind if d in named),
            "healthy_named": sorted(d for d in named if d not in blind),
            "healthy": len(runner.world.device_ids) - len(blind)}


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--vehicles", type=int, default=60)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grid", type=int, default=24, help="intersections per side of the city grid")
    parser.add_argument("--quick", action="store_true", help="20 vehicles, 4 days, a 14x14 grid")
    parser.add_argument("--footprint-half-width", type=float, default=None,
                        help="half width (m) the vehicles report in their coverage records' footprint_m; the "
                             "agent's own with the rendered drives' camera by default (14.43)")
    parser.add_argument("--detector", choices=("rendered", "real-frames"), default="rendered",
                        help="the detection model's per-pass recall and false events: as measured on rendered "
                             "drives, or on real survey frames (fleet_sim.calibration)")
    parser.add_argument("--blind", type=int, default=0,
                        help="this many vehicles find no defect (their false events stay): how soon the server "
                             "names them `finds_nothing`, and whether it names a healthy one")
    parser.add_argument("--json-out", type=Path, help="write the result as JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a server setting for this run, e.g. aggregate.repair_chance=0.005 (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.vehicles, args.days, args.grid = 20, 4, 14
    try:
        settings = parse_settings(args.set)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"bench_fleet: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.days <= 25:
        print("bench_fleet: --days must be 1-25 (the server refuses events older than 30 days)", file=sys.stderr)
        return 2
    try:
        info = asdict(services.up())
        dsn = fresh_database("fleet_bench")  # migrated
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"bench_fleet: services could not start: {exc}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="bench_fleet_"))
    cfg = server_config(folder, dsn, info, settings)
    server = subprocess.Popen([str(Path(sys.executable).with_name("fleet-server")), "-c", str(cfg), "ingest"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(folder / "ingest.log", "w"))  # noqa: SIM115
    devices: list[str] = []  # whose broker logins this run added (a fresh prefix each run): removed at the end
    try:
        detection = DetectionParams()
        if args.detector == "real-frames":
            detection = replace(detection, p_detect=tuple(REAL_FRAMES_P_DETECT.items()),
                                fp_per_km=tuple(REAL_FRAMES_FP_PER_KM.items()))
        if args.footprint_half_width is not None:
            detection = replace(detection, footprint_half_width_m=args.footprint_half_width)
        params = WorldParams(seed=args.seed, vehicles=args.vehicles, grid=(args.grid, args.grid),
                             detection=detection, device_prefix=f"fsim{secrets.token_hex(2)}", blind=args.blind)
        # Simulated time ends before today's midnight UTC, so every message is within the server's horizon.
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        world = World(params, today - timedelta(seconds=args.days * DAY_S))
        print(f"city {world.net.length_km:.0f} km of streets, {len(world.field.defects)} defects at the start, "
              f"{args.vehicles} vehicles, {args.days} days", flush=True)
        t0 = time.monotonic()
        devices = list(world.device_ids)
        creds = provision(dsn, Path(info["passwd_file"]), Path(info["broker_pid_file"]), devices)
        print(f"provisioned {len(creds)} devices in {time.monotonic() - t0:.1f} s", flush=True)
        time.sleep(0.5)  # the broker re-reads its password file on the reload signal
        runner = Runner(world, info["mqtt_host"], info["mqtt_port"], creds, dsn)
        stats = runner.run(args.days, progress=sys.stderr.isatty())
        scorer = runner.scorer()
        result = {"bench": "fleet", "vehicles": args.vehicles, "days": args.days, "seed": args.seed,
                  "detector": args.detector,
                  "server_settings": settings,
                  "city_km": round(world.net.length_km, 1), "defects_total": len(world.field.defects),
                  "k_passes": scorer.k_passes(), "confirmation": scorer.confirmation(world.truth.first_detected),
                  "repairs": scorer.repairs(), "long_cracks": scorer.long_cracks(),
                  "finds_nothing": named_blind(runner, devices[:args.blind]),
                  "run": {k: v for k, v in asdict(replace(stats, ack_wait_s=[])).items() if k != "ack_wait_s"}}
        result["goals"] = goals(result)
    finally:
        server.terminate()
        server.wait(30)
        remove_logins(Path(info["passwd_file"]), Path(info["broker_pid_file"]), devices)
    print_report(result)
    print(json.dumps(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    if stats.unacked:
        print(f"bench_fleet: the ingest worker's log is kept in {folder / 'ingest.log'}", file=sys.stderr)
        return 1
    shutil.rmtree(folder, ignore_errors=True)  # it holds the database's and the broker's passwords
    return 0


if __name__ == "__main__":
    sys.exit(main())
