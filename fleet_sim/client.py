"""One vehicle's uplink: an MQTT 5 client with the device's own login that publishes its outbox (QoS 1) and
applies the server's acks from roadmon/v1/<device>/ack."""

from __future__ import annotations

import json
import logging
import select
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_sim.outbox import Outbox
from roadmon_contract import topics

log = logging.getLogger(__name__)


class VehicleLink:
    """THREADED: paho's own network thread per vehicle (a few hundred vehicles); otherwise a Swarm drives
    the sockets of thousands of vehicles from one thread."""

    def __init__(self, host: str, port: int, device_id: str, password: str, outbox: Outbox,
                 threaded: bool = True) -> None:
        self.device_id = device_id
        self.outbox = outbox
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device_id}-sim", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(device_id, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.threaded = threaded
        self.client.connect(host, port, keepalive=60, clean_start=True)
        if threaded:
            self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("%s: broker refused the login: %s", self.device_id, reason)
            return
        client.subscribe(topics.ack(self.device_id), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self.outbox.ack(json.loads(msg.payload))
        except ValueError:
            log.warning("%s: unreadable ack %r", self.device_id, msg.payload[:200])

    def pump(self) -> int:
        """Publish what the outbox says is due; returns how many."""
        due = self.outbox.due(time.monotonic())
        for _, kind, body in due:
            self.client.publish(f"{topics.PREFIX}/{self.device_id}/{kind}", body, qos=1)
        return len(due)

    def close(self) -> None:
        self.client.disconnect()
        if self.threaded:
            self.client.loop_stop()


class Swarm:
    """The network I/O of many unthreaded VehicleLinks in one thread, with one selector over their sockets
    (a thread per vehicle does not scale to a depot of thousands on a small machine)."""

    def __init__(self, links: list[VehicleLink]) -> None:
        self.links = links
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="swarm", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            poller, by_fd = select.poll(), {}  # poll: no 1,024-descriptor limit as select() has
            for link in self.links:
                sock = link.client.socket()
                if sock is not None:
                    by_fd[sock.fileno()] = link
                    poller.register(sock, select.POLLIN | (select.POLLOUT if link.client.want_write() else 0))
            if not by_fd:
                time.sleep(0.05)
                continue
            for fd, mask in poller.poll(50):
                link = by_fd[fd]
                if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    link.client.loop_read()
                if mask & select.POLLOUT:
                    link.client.loop_write()
            for link in self.links:
                link.client.loop_misc()

    @classmethod
    def connect(cls, host: str, port: int, boxes: dict[str, Outbox], passwords: dict[str, str],
                timeout_s: float = 120.0) -> Swarm:
        """One unthreaded link per vehicle of BOXES (its outbox) with its password, driven by a new Swarm; returns
        once every vehicle has connected and subscribed to its acks (RuntimeError naming one that did not)."""
        swarm = cls([])
        try:
            for device, box in boxes.items():
                swarm.links.append(VehicleLink(host, port, device, passwords[device], box, threaded=False))
            for link in swarm.links:
                if not link.subscribed.wait(timeout_s):
                    raise RuntimeError(f"{link.device_id} did not connect")
        except BaseException:
            swarm.close()
            raise
        return swarm

    def pump(self) -> int:
        """Publish what every vehicle's outbox says is due; returns how many."""
        return sum(link.pump() for link in self.links)

    def close(self) -> None:
        """Disconnect every vehicle and stop the I/O thread."""
        for link in self.links:
            link.close()
        self._stop.set()
        self._thread.join(5)
