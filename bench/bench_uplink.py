"""Uplink drain rate: a backlog of events drained from the outbox to a loopback Mosquitto WITH end-to-end
confirmation (PUBACK -> sent, server ack -> confirmed, every state change in SQLite), against bare paho
publishing the same payloads at QoS 1 (PUBACKs only, nothing stored) in the same run. Target ratio >= 0.5.

    python -m bench.bench_uplink [--quick] [--events N]

A private broker on a free port and, during the drain, an ack server (tests/ack_server.py) in a process of its
own play the fleet side; each bare run happens before and after the drain and the two are averaged (the
machines are shared and noisy). The RESULT line's ratio is against the faster of the two bare runs. Exit code 1
when it misses the target or an event stays unconfirmed (a "MISS: ..." line says which).
"""

from __future__ import annotations

import argparse
import json
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

from bench.common import description, verdict
from edge_agent.config.outbox import OutboxConfig
from edge_agent.config.uplink import UplinkConfig
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from roadmon_contract import topics
from scripts import services
from tests.test_outbox import make_event

ROOT = Path(__file__).resolve().parent.parent

DEVICE = "veh-bench"
WINDOW = UplinkConfig().window  # the default config's window, for the drain and the bare runs alike
BARE_CPU: dict[bool, list[float]] = {True: [], False: []}  # process CPU seconds of each bare run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_window(window: int) -> None:
    global WINDOW
    WINDOW = window


def bare_publish(port: int, password: str, bodies: list[bytes], threaded: bool) -> float:
    """Seconds for plain paho to publish BODIES at QoS 1 and get every PUBACK, at most WINDOW unacknowledged
    (the uplink's window; paho slows down more than linearly with more in flight). Either with paho's network
    thread (loop_start, the usual way) or on one thread interleaving publish and loop() as the uplink does."""
    room = threading.Condition()
    acked = 0

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        nonlocal acked
        with room:
            acked += 1
            room.notify()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{DEVICE}-bare-{secrets.token_hex(3)}",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(DEVICE, password)
    client.max_inflight_messages_set(0)  # paho's own limit rescans its queue on every PUBACK; we bound it here
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    topic = topics.event(DEVICE)
    if threaded:
        client.loop_start()
    t0 = time.monotonic()
    cpu0 = time.process_time()
    deadline = t0 + 600

    def wait_until(limit: int) -> None:
        while acked < limit and time.monotonic() < deadline:
            if threaded:
                with room:
                    room.wait_for(lambda: acked >= limit, 0.1)
            else:
                client.loop(0.01)

    for i, body in enumerate(bodies):
        if i - acked >= WINDOW:
            wait_until(i - WINDOW + 1)
        client.publish(topic, body, qos=1)
        if not threaded and i % 50 == 0:
            client.loop(0)
    wait_until(len(bodies))
    if acked < len(bodies):
        raise RuntimeError(f"bare publish: only {acked} of {len(bodies)} PUBACKs")
    elapsed = time.monotonic() - t0
    BARE_CPU[threaded].append(time.process_time() - cpu0)
    client.disconnect()
    if threaded:
        client.loop_stop()
    return elapsed


def confirmed_drain(port: int, password_file: Path, outbox: Outbox, n: int) -> tuple[float, dict, float]:
    cfg = UplinkConfig(host="127.0.0.1", port=port, tls=False, password_file=str(password_file), window=WINDOW,
                       ack_timeout_s=120, heartbeat_s=5, session_expiry_s=0)
    uplink = Uplink(cfg, DEVICE, outbox)
    t0 = time.monotonic()
    uplink.start()
    deadline = t0 + 1200
    cpu0 = time.process_time()
    while uplink.counters["confirmed"] < n and time.monotonic() < deadline:
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    print(f"agent process CPU during the drain: {cpu:.1f} s in {elapsed:.1f} s ({cpu / n * 1e6:.0f} us/event)")
    uplink.stop()
    return elapsed, uplink.snapshot(), cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--quick", action="store_true", help="10 000 events instead of 100 000")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--window", type=int, default=WINDOW, help="in-flight window (default: the config's)")
    args = parser.parse_args()
    set_window(args.window)
    n = args.events or (10_000 if args.quick else 100_000)

    tmp = Path(tempfile.mkdtemp(prefix="bench-uplink-"))
    # Mosquitto's default of 20 QoS 1 messages in flight per subscriber caps the ack server at 20 per round
    # trip; a fleet's broker is tuned for its ingest, so this one is too.
    mq = services.Mosquitto(state=tmp, port=free_port(), name="mqtt-bench", extra_conf="max_inflight_messages 1000")
    password = secrets.token_urlsafe(12)
    mq._write_config()
    mq.add_device(DEVICE, password)
    mq.up()
    (tmp / "pw").write_text(password)
    acker = None
    try:
        outbox = Outbox(tmp / "outbox.db", OutboxConfig(synchronous="NORMAL", budget_mb=4096))
        events = [make_event(outbox, severity=(i % 100) / 100) for i in range(n)]
        # The bare runs publish twins of the backlog (same shape and size, other event_ids), so that the ack
        # server's answers to them cannot confirm rows of the outbox that were never sent.
        twins = [make_event(outbox, severity=(i % 100) / 100) for i in range(n)]
        bodies = [json.dumps(e, separators=(",", ":")).encode() for e in twins]
        t0 = time.monotonic()
        for e in events:
            outbox.add_event(e)
        fill_s = time.monotonic() - t0
        print(f"backlog: {n} events of ~{sum(map(len, bodies)) // n} B written in {fill_s:.1f} s; "
              f"window {WINDOW}", flush=True)

        bare = {}
        for threaded in (True, False):
            bare[threaded] = [bare_publish(mq.port, password, bodies, threaded)]
        # The ack server runs only for the drain: the bare runs publish with nobody subscribed, as bare as it gets.
        acker = subprocess.Popen([sys.executable, "-m", "tests.ack_server", "--port", str(mq.port),
                                  "--password", mq.server_password, "--client-id", "bench-ack"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert acker.stdout.readline().strip() == "ready"
        drain_s, snap, drain_cpu = confirmed_drain(mq.port, tmp / "pw", outbox, n)
        acker.stdin.close()
        acker.wait(60)
        print(f"ack server: {acker.stdout.read().strip()}")
        stats = outbox.stats()
        for threaded in (True, False):
            bare[threaded].append(bare_publish(mq.port, password, bodies, threaded))
        drain_rate = n / drain_s
        print(f"outbox drain with confirmation: {drain_rate:,.0f} msg/s "
              f"(confirmed {stats['events']['confirmed']}/{n}, published {snap['published']}, "
              f"resent {snap['resent']})")
        rates = {}
        for threaded, name in ((True, "bare paho QoS 1, loop_start thread"), (False, "bare paho QoS 1, one thread")):
            rates[threaded] = n / (sum(bare[threaded]) / 2)
            runs = ", ".join(f"{n / s:,.0f}" for s in bare[threaded])
            cpu_us = sum(BARE_CPU[threaded]) / len(BARE_CPU[threaded]) / n * 1e6
            print(f"{name}: {rates[threaded]:,.0f} msg/s (runs before/after the drain: {runs}; "
                  f"{cpu_us:.0f} us CPU/event)")
        ratio = drain_rate / max(rates.values())
        bare_cpu = min(sum(v) / len(v) for v in BARE_CPU.values())
        print(f"CPU per event: bare {bare_cpu / n * 1e6:.0f} us, drain with confirmation {drain_cpu / n * 1e6:.0f} us "
              f"-> CPU-bound ratio {bare_cpu / drain_cpu:.2f}")
        ok = stats["events"]["confirmed"] == n
        print(f"RESULT drain/bare = {ratio:.2f} against the faster bare run "
              f"({drain_rate / rates[True]:.2f} against loop_start) (target >= 0.5)"
              f"{'' if ok else '  NOT ALL CONFIRMED'}")
        outbox.close()
        misses = [] if ratio >= 0.5 else [f"drain/bare = {ratio:.2f} against the faster bare run (target >= 0.5)"]
        if not ok:
            misses.append(f"only {stats['events']['confirmed']} of {n} events confirmed")
        return verdict(misses)
    finally:
        if acker is not None and acker.poll() is None:
            acker.kill()
        mq.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
