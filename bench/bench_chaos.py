"""Chaos while agents drain: three agents with a backlog (and new events, 20/s each) drain through a private
Mosquitto into a `fleet-server ingest` process on the project-local PostGIS, while the server is SIGKILLed
twice, the broker SIGKILLed twice and PostgreSQL stopped (20 s; 4 s with --quick). Prints what was lost and
what was doubled (both must be 0).

    python -m bench.bench_chaos [--quick] [--events N]

Lost: events an agent generated that are not in `sightings` once every queue has drained. Doubled: rows
stored twice (event_id is the key, so only the aggregation could double: the defects' sighting counts against
the sightings) and events an agent holds as confirmed that the database does not have.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from bench.common import description
from edge_agent.config.outbox import OutboxConfig
from edge_agent.config.uplink import UplinkConfig
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from fleet_server.migrate import migrate
from scripts import services
from tests.server_fixtures import make_event, offset

ROOT = Path(__file__).resolve().parent.parent

AGENTS = 3
RATE_PER_AGENT = 20.0  # new events per second per agent while the chaos runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`fleet-server ingest` in a process of its own, so that it can be killed like a crashed pod."""

    def __init__(self, conf: Path, env: dict[str, str], log: Path) -> None:
        self.conf, self.env, self.log = conf, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "fleet_server", "-c", str(self.conf), "ingest",
                                          "--workers", "1"], env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def agent_events(device: str, n: int) -> list[dict]:
    base = (48.1 + 0.01 * int(device[-1]), 11.5)
    return [make_event(device, *offset(*base, 40.0 * (i % 400), 30.0 * (i // 400)), seq=i + 1,
                       severity=(i % 10) / 10) for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--quick", action="store_true", help="a smaller backlog")
    parser.add_argument("--events", type=int, default=None, help="backlog per agent (default 2000, quick 300)")
    args = parser.parse_args()
    per_agent = args.events or (300 if args.quick else 2000)

    services.up()
    pg = services.Postgres()
    dsn = pg.create_database("bench_chaos")
    migrate(dsn)
    tmp = Path(tempfile.mkdtemp(prefix="roadmon-chaos-"))
    mq = services.Mosquitto(state=tmp, port=free_port(), name="mqtt-chaos",
                            extra_conf="max_inflight_messages 1000")
    mq.up()
    conf = tmp / "server.toml"
    conf.write_text(f'[mqtt]\nport = {mq.port}\nclient_id_prefix = "chaos-{secrets.token_hex(3)}"\n'
                    'session_expiry_s = 300\n[ingest]\nshare_group = "chaos"\nbatch_wait_s = 0.05\n'
                    "db_retry_max_s = 2.0\n")
    env = {**os.environ, "ROADMON_DATABASE_DSN": dsn, "ROADMON_MQTT_PASSWORD": mq.server_password,
           "ROADMON_INSTANCE": "chaos"}
    server = Server(conf, env, tmp / "server.log")

    outboxes, uplinks, generated = [], [], set()
    for i in range(AGENTS):
        device, password = f"veh-chaos-{i}", secrets.token_urlsafe(12)
        mq.add_device(device, password)
        (tmp / f"pw-{i}").write_text(password)
        ob = Outbox(tmp / f"outbox-{i}.db", OutboxConfig(synchronous="NORMAL"))
        for event in agent_events(device, per_agent):
            assert ob.add_event(event)
            generated.add(event["event_id"])
        cfg = UplinkConfig(host="127.0.0.1", port=mq.port, tls=False, password_file=str(tmp / f"pw-{i}"),
                           backoff_initial_s=0.2, backoff_max_s=2.0, ack_timeout_s=10.0, heartbeat_s=5.0,
                           session_expiry_s=3600)
        outboxes.append(ob)
        uplinks.append(Uplink(cfg, device, ob, status_path=tmp / f"status-{i}.json"))

    def depth() -> int:
        return sum(ob.stats()["queue_depth"] for ob in outboxes)

    producing = threading.Event()
    producing.set()

    def produce(i: int, ob: Outbox) -> None:
        # Vehicles keep driving: new events arrive throughout the chaos, so every failure meets some in flight.
        n = per_agent
        while producing.is_set():
            event = agent_events(f"veh-chaos-{i}", n + 1)[-1]
            if ob.add_event(event):
                generated.add(event["event_id"])
            n += 1
            time.sleep(1 / RATE_PER_AGENT)

    t0 = time.monotonic()
    server.start()
    for up in uplinks:
        up.start()
    producers = [threading.Thread(target=produce, args=(i, ob), daemon=True) for i, ob in enumerate(outboxes)]
    for p in producers:
        p.start()
    db_pause = 4.0 if args.quick else 20.0
    steps = [(2.0, "server SIGKILLed", server.kill, server.start, 1.0),
             (6.0, "broker SIGKILLed", mq.kill, mq.up, 2.0),
             (11.0, "PostgreSQL stopped", pg.down, pg.up, db_pause),
             (16.0 + db_pause, "server SIGKILLed", server.kill, server.start, 1.0),
             (20.0 + db_pause, "broker SIGKILLed", mq.kill, mq.up, 2.0)]
    for at, what, hurt, heal, pause_s in steps:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        print(f"{time.monotonic() - t0:6.1f} s  {what} (queues hold {depth()}); back after {pause_s:g} s", flush=True)
        hurt()
        time.sleep(pause_s)
        heal()
    time.sleep(2.0)
    producing.clear()
    for p in producers:
        p.join()
    total = len(generated)
    deadline = time.monotonic() + 600
    while depth() and time.monotonic() < deadline:
        time.sleep(0.2)
    drained_s = time.monotonic() - t0
    for up in uplinks:
        up.stop()
    server.stop()
    mq.stop()

    with psycopg.connect(dsn, autocommit=True) as conn:
        stored = {r[0] for r in conn.execute("SELECT event_id::text FROM sightings")}
        rows = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]
        counted = conn.execute("SELECT coalesce(sum(sighting_count), 0) FROM defects").fetchone()[0]
    confirmed_on_agents = {eid for ob in outboxes for eid, st in ob.states().items() if st == "confirmed"}
    left = depth()
    lost = len(generated - stored)
    doubled = (rows - len(stored)) + abs(counted - rows)
    confirmed_not_stored = len(confirmed_on_agents - stored)
    for ob in outboxes:
        ob.close()
    print(f"\n{AGENTS} agents, backlog {AGENTS} x {per_agent} + new during the chaos = {total} events; all drained "
          f"after {drained_s:.0f} s through {len(steps)} failures; left in the queues: {left}")
    print(f"lost: {lost}")
    print(f"duplicated: {doubled}")
    print(f"confirmed on an agent but not stored: {confirmed_not_stored}")
    ok = lost == 0 and doubled == 0 and confirmed_not_stored == 0 and left == 0
    print("chaos: OK" if ok else f"chaos: FAILED (server log: {tmp / 'server.log'})")
    if ok:  # the broker's state, the agents' queues and passwords; kept for a look when it failed
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
