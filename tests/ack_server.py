"""A stand-in for the fleet server's ingest, for uplink tests and benchmarks: it subscribes to the events and
coverage of the given devices (default: all) as `roadmon-server`, records what arrives (distinct ids and
total deliveries) and answers on roadmon/v1/<device>/ack, in batches, as the real server does after its
PostGIS commit.

`delay_s` makes it a slow subscriber (it sleeps in its network loop, so the broker has to queue for it);
`ack_after_s` makes it a slow committer (it confirms what arrived that long ago); `ack=False` makes it record
without confirming.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict, deque

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from roadmon_contract import topics


class AckServer:
    def __init__(self, host: str, port: int, user: str, password: str, *, delay_s: float = 0.0,
                 ack: bool = True, ack_after_s: float = 0.0, flush_s: float = 0.02, client_id: str = "ack-server",
                 session_expiry_s: int = 0, devices: list[str] | None = None) -> None:
        self.host, self.port = host, port
        self.delay_s = delay_s
        self.session_expiry_s = session_expiry_s
        # On the shared broker, listen to (and confirm for) only this test's devices, never other tests'.
        self.devices = devices or ["+"]
        self.ack = ack
        self.ack_after_s = ack_after_s
        self._held: deque[tuple[float, dict[str, dict[str, list[str]]]]] = deque()  # (received, acks) not yet due
        self.flush_s = flush_s
        self.events: Counter[str] = Counter()     # event_id -> deliveries
        self.coverage: Counter[str] = Counter()
        self.statuses: list[dict] = []
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"event_ids": [], "coverage_ids": []})
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self._flusher = threading.Thread(target=self._flush_loop, name="ack-flush", daemon=True)

    # ------------------------------------------------------------------------------------------ control
    def start(self, timeout_s: float = 10) -> AckServer:
        props = Properties(PacketTypes.CONNECT)
        # > 0 keeps our queue across our own reconnects, like the real ingest (private brokers only, so that
        # the shared broker does not keep queues of finished tests)
        props.SessionExpiryInterval = self.session_expiry_s
        self.client.connect_async(self.host, self.port, keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            raise TimeoutError(f"ack server could not subscribe on {self.host}:{self.port}")
        self._flusher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._flush(force=True)
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------------------------------- figures
    @property
    def distinct(self) -> int:
        with self._lock:
            return len(self.events)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.events.values())

    def received_events(self) -> set[str]:
        """A copy of the event ids received so far, safe to take while messages arrive."""
        with self._lock:
            return set(self.events)

    def status_states(self) -> list[str]:
        with self._lock:
            return [s.get("state") for s in self.statuses]

    # ------------------------------------------------------------------------------------------ internals
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        client.subscribe([(f"{topics.PREFIX}/{device}/{kind}", 1) for device in self.devices
                          for kind in ("event", "coverage", "status")])

    def _on_message(self, client, userdata, msg) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        device = topics.device_of(msg.topic)
        kind = msg.topic.rsplit("/", 1)[-1]
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            if kind == "status":
                self.statuses.append(body)
            elif kind == "event":
                self.events[body["event_id"]] += 1
                self._pending[device]["event_ids"].append(body["event_id"])
            elif kind == "coverage":
                self.coverage[body["coverage_id"]] += 1
                self._pending[device]["coverage_ids"].append(body["coverage_id"])

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self._flush()

    def _flush(self, force: bool = False) -> None:
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: {"event_ids": [], "coverage_ids": []})
        if not self.ack:
            return
        now = time.monotonic()
        self._held.append((now, pending))
        while self._held and (force or now - self._held[0][0] >= self.ack_after_s):
            for device, ack in self._held.popleft()[1].items():
                self.client.publish(topics.ack(device), json.dumps(ack), qos=1)


def main() -> None:
    """Run as a process of its own (benchmarks): until stdin closes, then print its figures as JSON."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--client-id", default="ack-server")
    args = parser.parse_args()
    server = AckServer("127.0.0.1", args.port, "roadmon-server", args.password, client_id=args.client_id).start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop()
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"distinct": server.distinct, "total": server.total,
                      "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}), flush=True)


if __name__ == "__main__":
    main()
