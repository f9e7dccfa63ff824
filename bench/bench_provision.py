"""Bulk provisioning benchmark: `fleet-server device import` of N devices (default 10,000) against the project's
real PostGIS and a private Mosquitto (so the shared broker's password file stays small), next to `device add`
for a few devices. Target: 10,000 devices in under a minute. It then logs in to the broker as the last
imported device with the issued password.

    python -m bench.bench_provision [--devices N] [--add-sample N] [--http-tokens]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import description
from fleet_server.migrate import migrate
from scripts import services

ROOT = Path(__file__).resolve().parent.parent


def _cli(conf: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet_server", "-c", str(conf), *args], env=env,
                          capture_output=True, text=True, timeout=900)


def _logs_in(port: int, user: str, password: str) -> bool:
    done = threading.Event()
    ok: list[bool] = []

    def on_connect(client, userdata, flags, rc, props) -> None:
        ok.append(not rc.is_failure)
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{secrets.token_hex(3)}",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(10)
    client.disconnect()
    client.loop_stop()
    return ok == [True]


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--devices", type=int, default=10_000, help="devices imported")
    parser.add_argument("--add-sample", type=int, default=5, help="devices added one by one with `device add`")
    parser.add_argument("--http-tokens", action="store_true", help="import with --http-tokens too")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 devices (`python -m bench.run_all --quick` passes it to every bench; "
                             "`make bench` does not)")
    args = parser.parse_args()
    if args.quick:
        args.devices = 1_000
    services.up()
    pg = services.Postgres()
    dsn = pg.create_database("bench_provision")
    migrate(dsn)
    work = Path(tempfile.mkdtemp(prefix="bench-provision-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = services.Mosquitto(state=work, port=port, name="mqtt")
    broker.up()
    try:
        conf = work / "server.toml"
        conf.write_text(f'[mqtt]\nport = {port}\n[broker_files]\npasswd_file = "{broker.passwd_file}"\n'
                        f'acl_file = "{broker.acl_file}"\npid_file = "{broker.pid_file}"\n'
                        f'[models]\ndir = "{work / "models"}"\n')
        env = {**os.environ, "ROADMON_DATABASE_DSN": dsn}
        t0 = time.monotonic()
        for i in range(args.add_sample):
            r = _cli(conf, env, "device", "add", f"add-{i:03d}", "--json")
            assert r.returncode == 0, r.stderr
        per_add = (time.monotonic() - t0) / max(1, args.add_sample)

        src = work / "fleet.csv"
        src.write_text("device_id,groups\n" + "".join(f"veh-{i:05d},depot-{i % 7}\n" for i in range(args.devices)))
        extra = ["--http-tokens"] if args.http_tokens else []
        t0 = time.monotonic()
        r = _cli(conf, env, "device", "import", str(src), *extra)
        elapsed = time.monotonic() - t0
        assert r.returncode == 0, r.stdout + r.stderr
        sheet = list(csv.DictReader((work / "fleet.credentials.csv").open()))
        users = sum(1 for line in broker.passwd_file.read_text().splitlines() if line.startswith("veh-"))
        time.sleep(0.5)  # the broker re-reads its password file on SIGHUP
        last = sheet[-1]
        login = _logs_in(port, last["mqtt_username"], last["mqtt_password"])
        print(json.dumps({"devices": args.devices, "import_s": round(elapsed, 2),
                          "per_device_ms": round(1000 * elapsed / args.devices, 3),
                          "device_add_s_each": round(per_add, 3), "passwd_users": users,
                          "credentials_rows": len(sheet), "last_device_logs_in": login,
                          "http_tokens": args.http_tokens}))
        ok = elapsed < 60 and users == args.devices and len(sheet) == args.devices and login
        print(f"device import: {args.devices:,} devices in {elapsed:.1f} s (whole command, process start "
              f"included; {1000 * elapsed / args.devices:.2f} ms each) vs device add {per_add:.2f} s each "
              f"({per_add * args.devices / max(elapsed, 1e-9):.0f}x); the last one logs in: {login}; "
              f"{'PASS' if ok else 'FAIL'} (target < 60 s)")
        return 0 if ok else 1
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
