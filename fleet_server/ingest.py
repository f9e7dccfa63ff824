"""MQTT ingest worker: shared subscription -> validate -> one transaction per batch -> ack after commit.

Each worker is one MQTT 5 client in the shared group `$share/<group>/roadmon/v1/+/...`, so several workers
(threads, processes or machines) split the load. The worker acknowledges the broker's delivery (PUBACK,
paho's manual_ack) only after the batch is committed, and publishes the committed ids on the device's ack
topic only then too. A worker that dies mid-batch therefore loses nothing: the broker re-delivers what it
never acknowledged (persistent session), and the agent re-sends what the server never acked.

The server cannot see who published a message on a shared subscription; the broker's ACL guarantees that a
device writes only under roadmon/v1/<its login>/..., so the topic's device is the login, and the worker
checks that the payload's device_id agrees with it.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
import weakref
from collections import deque
from datetime import UTC, datetime
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from fleet_server import blind_boxes, metrics, partitions, repair_odds
from fleet_server.config import ConfigError, ServerConfig
from fleet_server.db import Reconnecting, connect
from fleet_server.store import Batch, RejectPolicy, Stored, empty_ack, purge_rejected, store_batch
from fleet_server.validate import Invalid, Rejection, check_message, drop_camera_metadata, message_ref, parse_json
from roadmon_contract import topics

log = logging.getLogger(__name__)


class Incoming(NamedTuple):  # a tuple: one is made per message on the MQTT thread, so it should be cheap
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: datetime
    retain: bool = False  # as published: only the kinds in NEVER_RETAINED are subscribed so that it shows


# Kinds on which a retained message is never legitimate: the agent retains only its status. Mosquitto 2.0
# cannot refuse retain per topic, and a device may write cmd/<any name>/result, so a login could park any
# number of messages of up to max_packet_size at the broker (150 x 2.9 MB grew it by 424 MB, persisted in
# mosquitto.db). The workers see the flag on these kinds (retain as published) and clear such messages.
NEVER_RETAINED = frozenset({"event", "coverage", "result"})
RETAINED_LOG_EVERY_S = 60.0  # a device flooding retained messages must not flood the log as well


def subscriptions(cfg: ServerConfig, group: str) -> list[str]:
    out = []
    for device in cfg.ingest.devices:
        base = f"$share/{group}/{topics.PREFIX}/{device}"
        out += [f"{base}/event", f"{base}/coverage", f"{base}/status", f"{base}/cmd/+/result"]
    return out


def subscribe_options(topic_filter: str) -> SubscribeOptions:
    """Retain handling 2 (do not send) everywhere: the retained messages are the devices' last statuses,
    which PostGIS has already, and a new worker would otherwise get one per vehicle at every start (10,000
    at 10k vehicles). Retain as published on the kinds that must never be retained, so that the worker can
    tell such a message from a live one; not on status, whose retain flag the agent always sets."""
    rap = not topic_filter.endswith("/status")
    return SubscribeOptions(qos=1, retainAsPublished=rap, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)


def kind_of(topic: str) -> tuple[str, str | None, str | None]:
    """(kind, device, command name) of a topic the ingest workers take: event, coverage, status or a command's
    result; kind 'unknown' for anything else (an ack or a command is the server's own, never ingested)."""
    kind, device, command = topics.parse(topic)
    if kind in ("ack", "cmd"):
        return "unknown", device, None
    return kind, device, command


def classify(messages: list[Incoming], cfg: ServerConfig, source: str = "mqtt") -> Batch:
    """Sort messages into a Batch; anything invalid becomes a rejection with its reason. Whatever goes wrong
    with one message (a bug included) rejects that message alone, never the others of its chunk."""
    batch = Batch(source=source)
    now = datetime.now(UTC)
    for msg in messages:
        kind, device, name = kind_of(msg.topic)
        try:
            _classify_one(batch, msg, kind, device, name, now, cfg)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, Invalid) else f"could not be checked: {type(exc).__name__}"
            if not isinstance(exc, Invalid):
                log.exception("classifying a message on %s failed; rejecting it alone", msg.topic)
            ref = message_ref(msg.payload) if kind in ("event", "coverage") else None
            batch.rejected.append(Rejection(source, msg.topic, device, reason, msg.payload, ref))
            metrics.count_ingested(kind, "rejected")
    return batch


def _classify_one(batch: Batch, msg: Incoming, kind: str, device: str | None, name: str | None, now: datetime,
                  cfg: ServerConfig) -> None:
    if kind == "unknown" or device is None:
        raise Invalid(f"unexpected topic {msg.topic!r}")
    if is_clearing(msg, kind):
        return  # a retained message being deleted (a worker's _clear_retained): nothing to store, no dead letter
    if kind == "result" and name == topics.PROBE_COMMAND:
        return  # a doctor's broker probe: acknowledged to the broker, never a command result (topics.probe)
    if kind == "result":
        payload = parse_json(msg.payload, cfg.ingest.max_result_bytes)
        if not isinstance(payload, dict):
            raise Invalid("command result: not a JSON object")
        batch.results.append((device, name or "", payload))
        return
    obj = check_message(kind, device, msg.payload, now, cfg.ingest)
    if kind == "event":
        batch.events.append((obj, msg.received_at))
        if not drop_camera_metadata(obj):  # else stored as changed, not as received
            # The first message of an id keeps its text: a later one is a repeat or a clash (store._first_of_each).
            batch.raw.setdefault(obj["event_id"], msg.payload.decode("utf-8-sig"))  # the decoder checked the UTF-8
        batch.origin.setdefault(obj["event_id"], []).append(msg)
    elif kind == "coverage":
        batch.coverage.append((obj, msg.received_at))
        batch.origin.setdefault(obj["coverage_id"], []).append(msg)
    else:
        batch.statuses.append((device, obj, msg.received_at))


def is_clearing(msg: Incoming, kind: str) -> bool:
    """The broker deleting what was retained on a topic (an empty message, delivered to subscribers too): a
    worker's own clear of a never-retained kind comes back to the group this way, and `device erase`'s clear of an
    erased device's status (no status is empty; stored as refused, it named the erased device again)."""
    return not msg.payload and ((msg.retain and kind in NEVER_RETAINED) or kind == "status")


def to_clear(messages: list[Incoming]) -> dict[str, list[Incoming]]:
    """The retained messages among MESSAGES that must not stay at the broker, by topic. An empty one is
    itself a clear, and clearing it again would loop."""
    out: dict[str, list[Incoming]] = {}
    for msg in messages:
        if msg.retain and msg.payload and kind_of(msg.topic)[0] in NEVER_RETAINED:
            out.setdefault(msg.topic, []).append(msg)
    return out


def ack_messages(stored: Stored, batch: Batch) -> dict[str, dict[str, Any]]:
    """Per device: the committed ids, plus `rejected` [{id, reason}] for its messages that will never be
    accepted (they are kept in the dead-letter table), so an agent may stop re-sending them."""
    out: dict[str, dict[str, Any]] = {device: dict(ids) for device, ids in stored.acks.items()}
    for device, status, _ in batch.statuses:
        if status.get("awaiting_server") is True:  # an agent backing off learns that the server is back
            message = out.setdefault(device, empty_ack())
            message["status_seen"] = status.get("sent_at")  # the key is what counts; sent_at names the status
    for r in batch.rejected + stored.conflicts:
        if r.ref is None or r.device_id is None:
            continue
        message = out.setdefault(r.device_id, empty_ack())
        message.setdefault("rejected", []).append({"id": r.ref, "reason": r.reason[:300]})
    return out


PREPARE_CHUNK = 200  # messages classified at a time; small, so the store stage never waits long for them
PURGE_EVERY_S = 600.0  # how often a worker deletes dead letters past their retention
RETENTION_EVERY_S = 86400.0  # how often (and at its start) a worker applies [retention] unless another is at it
BATCH_MAX_BYTES = 64 * 1024 * 1024  # a batch also closes at this much payload (thumbnails make messages large)


class _ByDevice:
    """Received messages by device, handed out round-robin: a device that floods the worker waits behind its own
    messages, not in front of every other device's (the broker delivers one worker's share in one queue)."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Incoming]] = {}
        self.size = 0

    def fill(self, inbox: queue.Queue[Incoming], most: int) -> None:
        """Move what INBOX holds (up to MOST in all here), waiting a little for the first message."""
        try:
            if not self.size:
                self._put(inbox.get(timeout=0.2))
            while self.size < most:
                self._put(inbox.get_nowait())
        except queue.Empty:
            pass

    def take(self, most: int) -> list[Incoming]:
        out: list[Incoming] = []
        while len(out) < most and self._queues:
            for device in list(self._queues):
                waiting = self._queues[device]
                out.append(waiting.popleft())
                if not waiting:
                    del self._queues[device]
                if len(out) >= most:
                    break
        self.size -= len(out)
        return out

    def _put(self, item: Incoming) -> None:
        parts = item.topic.split("/", 3)
        self._queues.setdefault(parts[2] if len(parts) > 2 else "", deque()).append(item)
        self.size += 1


class _Pending:
    """Classified messages waiting for the store stage, with the time the oldest of them arrived."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: list[Incoming] = []
        self._batch = Batch()
        self._bytes = 0
        self._since = 0.0

    def _full(self, size: int) -> bool:
        return len(self._items) >= size or self._bytes >= BATCH_MAX_BYTES

    def size(self) -> int:
        with self._cond:
            return len(self._items)

    def wait_for_room(self, size: int, stopping: threading.Event) -> int:
        """How many more messages fit in the pending batch, once at least one does."""
        with self._cond:
            while self._full(size) and not stopping.is_set():
                self._cond.wait(0.2)
            return max(1, size - len(self._items))

    def add(self, items: list[Incoming], batch: Batch) -> None:
        with self._cond:
            if not self._items:
                self._since = time.monotonic()
            self._items += items
            self._bytes += sum(len(i.payload) for i in items)
            self._batch.extend(batch)
            self._cond.notify_all()

    def take(self, size: int, wait_s: float, stopping: threading.Event) -> tuple[list[Incoming], Batch] | None:
        """The pending batch once it is full or its oldest message has waited WAIT_S; None after 0.2 s idle."""
        with self._cond:
            if not self._items:
                self._cond.wait(0.2)
                if not self._items:
                    return None
            while not self._full(size) and not stopping.is_set():
                remaining = self._since + wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken = (self._items, self._batch)
            self._items, self._batch, self._bytes = [], Batch(), 0
            self._cond.notify_all()
            return taken


_live: weakref.WeakSet[IngestWorker] = weakref.WeakSet()  # started, not stopped: read at each metrics scrape
metrics.INGEST_WAITING.set_function(lambda: sum(w.waiting() for w in list(_live)))
metrics.INGEST_STALLED.set_function(lambda: max((w.stalled_s() for w in list(_live)), default=0.0))


class IngestWorker:
    """One ingest worker: an MQTT client plus a thread that stores batches."""

    def __init__(self, cfg: ServerConfig, index: int = 0, role: str = "ingest") -> None:
        """ROLE ('serve' or 'ingest') and INDEX keep client ids apart between the processes of one instance:
        two clients with one id take the broker's session from each other."""
        self.cfg = cfg
        self.group = cfg.share_group()  # in the client id too: a device that could guess it could take the session
        self.client_id = f"{cfg.mqtt.client_id_prefix}-{role}-{cfg.mqtt.resolve_instance()}-{self.group}-{index}"
        self.reject_policy = RejectPolicy(cfg.ingest.rejected_keep_bytes, cfg.ingest.rejected_per_device_hour)
        self.last_progress = time.monotonic()  # when a batch was last committed or nothing was waiting
        self._next_purge = 0.0
        self._next_retention = 0.0
        self._next_curve = 0.0
        self._curve_thread: threading.Thread | None = None
        self._storing = 0  # messages of the batch being stored now
        self._defer_pause_s = 0.0  # set when a batch left most of itself for later (areas busy elsewhere)
        self.inbox: queue.Queue[Incoming] = queue.Queue(maxsize=cfg.ingest.queue_max)
        self.stopping = threading.Event()
        self._stopped = False
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker's SUBACK came: from now on nothing published is missed
        self._subscribe_mid: int | None = None
        self._connect_failures = 0  # connection attempts in a row that failed (logged now and then)
        self.trouble: str | None = None  # why it is not connected, for /health: a refused login read "disconnected"
        self.unsubscribed = threading.Event()
        self._unsubscribe_mid: int | None = None
        self._unsubacked: set[int] = set()  # mids of the UNSUBACKs received (see _drain)
        self.stats = {"batches": 0, "stored": 0, "duplicates": 0, "rejected": 0, "db_errors": 0,
                      "retained_cleared": 0}
        self._retained_logged_at = -RETAINED_LOG_EVERY_S
        self._retained_unlogged = 0  # retained messages cleared since the last log line
        self._db = Reconnecting(cfg.database)
        # Two stages, so messages are parsed and validated while PostGIS stores the previous batch: the store
        # stage takes whatever was classified meanwhile as its next batch (group commit), at most batch_size.
        self._pending = _Pending()
        self._received = _ByDevice()  # taken from the inbox, not yet classified (the prepare stage's own)
        self._prepare_thread = threading.Thread(target=self._prepare, name=f"ingest-prepare-{index}", daemon=True)
        self._thread = threading.Thread(target=self._run, name=f"ingest-{index}", daemon=True)
        self.client = self._make_client()

    # ------------------------------------------------------------------------------------------ MQTT
    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        password = m.resolve_password()
        client.username_pw_set(m.username, password)
        if m.tls:
            client.tls_set(ca_certs=str(m.ca_file) if m.ca_file else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(min_delay=max(1, int(m.reconnect_min_s)), max_delay=int(m.reconnect_max_s))
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.mqtt.session_expiry_s
        # Enough unacknowledged deliveries in flight to fill a batch (we PUBACK only after commit).
        props.ReceiveMaximum = min(65535, max(100, 2 * self.cfg.ingest.batch_size))
        return props

    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("%s: broker refused the connection: %s", self.client_id, reason_code)
            self.trouble = f"the broker refused the login ({reason_code}): mqtt.username / password_file"
            return
        self.trouble = None
        metrics.INGEST_BROKER_CONNECTS.inc()
        metrics.INGEST_BROKER_CONNECTED.labels(client=self.client_id).set(1)
        self._connect_failures = 0
        filters = subscriptions(self.cfg, self.group)
        _, self._subscribe_mid = client.subscribe([(f, subscribe_options(f)) for f in filters])
        self.connected.set()
        log.info("%s: connected, subscribed to %d filters", self.client_id, len(filters))

    def _on_connect_fail(self, client, userdata) -> None:
        # paho retries on its own; without this a broker down at start was silent until it came back.
        metrics.INGEST_BROKER_CONNECTED.labels(client=self.client_id).set(0)
        self._connect_failures += 1
        self.trouble = "the broker cannot be reached"
        if self._connect_failures % 20 == 1:
            m = self.cfg.mqtt
            log.warning("%s: cannot reach the broker at %s:%s (attempt %d); retrying every %g-%g s", self.client_id,
                        m.host, m.port, self._connect_failures, m.reconnect_min_s, m.reconnect_max_s)

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._unsubacked.add(mid)
        if mid == self._unsubscribe_mid:
            self.unsubscribed.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.warning("%s: the broker refused subscriptions: %s", self.client_id, ", ".join(refused))
            return
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        metrics.INGEST_BROKER_CONNECTED.labels(client=self.client_id).set(0)
        self.subscribed.clear()
        if not self.stopping.is_set() and self.trouble is None:  # after a refused login paho says "Protocol error"
            log.warning("%s: disconnected from the broker (%s); reconnecting", self.client_id, reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        item = Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, datetime.now(UTC), bool(msg.retain))
        # Blocking here when the worker lags is the back-pressure: the broker keeps the rest.
        while not self.stopping.is_set():
            try:
                self.inbox.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> IngestWorker:
        m = self.cfg.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False,
                                  properties=self._connect_properties())
        self.client.loop_start()
        self._prepare_thread.start()
        self._thread.start()
        _live.add(self)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """With mqtt.leave_group_on_stop (the default), leave the shared group without stranding anything:
        unsubscribe (the broker routes the group's new messages to the other workers from then on), store and
        acknowledge what was already delivered for up to ingest.drain_s, then end the broker session at the
        disconnect (MQTT 5 session expiry 0). A session kept after a worker is gone for good keeps taking its
        share of new messages until it expires; the messages still unacknowledged then are re-sent by the
        agents. Without it, the session stays for mqtt.session_expiry_s, for a restart under the same name."""
        if self._stopped:  # `serve` stops its workers at the API's shutdown, and again on its way out
            return
        self._stopped = True
        _live.discard(self)
        leave = self.cfg.mqtt.leave_group_on_stop
        if leave and self.connected.is_set() and self.cfg.ingest.drain_s > 0:
            self._drain(self.cfg.ingest.drain_s)
        self.stopping.set()
        self._prepare_thread.join(timeout_s)
        self._thread.join(timeout_s)
        if self._curve_thread is not None:
            self._curve_thread.join(timeout_s)
        props = Properties(PacketTypes.DISCONNECT)
        if leave:
            props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()
        self._db.drop()
        log.info("%s stopped%s", self.client_id, ", left the group and ended its session" if leave else
                 ", its session kept for a restart")

    def _drain(self, drain_s: float) -> None:
        deadline = time.monotonic() + drain_s
        self.unsubscribed.clear()
        rc, mid = self.client.unsubscribe(subscriptions(self.cfg, self.group))
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:  # the connection went meanwhile: no UNSUBACK will come
            log.warning("%s: could not unsubscribe (%s); stopping without a drain", self.client_id, rc)
            return
        self._unsubscribe_mid = mid
        # The network thread may have handled the UNSUBACK already, before unsubscribe() returned the mid here (a
        # local broker answers within a millisecond): then _on_unsubscribe saw no mid to match, and waiting for
        # it here took all of drain_s and skipped the drain itself.
        if mid in self._unsubacked:
            self.unsubscribed.set()
        if not self.unsubscribed.wait(max(0.0, deadline - time.monotonic())):
            log.warning("%s: no UNSUBACK within %.1f s; stopping anyway", self.client_id, drain_s)
            return
        # Deliveries already on their way still arrive after the UNSUBACK; done once nothing came for a while.
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self.waiting():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > max(0.3, 2 * self.cfg.ingest.batch_wait_s):
                return
            time.sleep(0.05)
        log.warning("%s: %d messages not stored within ingest.drain_s (%.1f s); the agents re-send them",
                    self.client_id, self.waiting(), drain_s)

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self.connected.wait(timeout_s)

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        """Whether the broker confirmed every subscription within TIMEOUT_S (callers that publish right after
        starting a worker wait for this, not for a fixed time)."""
        return self.subscribed.wait(timeout_s)

    # ------------------------------------------------------------------------------------ batch loop
    def _prepare(self) -> None:
        """Stage 1: classify messages (JSON, schema, ranges) as they come, into the pending batch."""
        size = self.cfg.ingest.batch_size
        while not self.stopping.is_set():
            room = self._pending.wait_for_room(size, self.stopping)
            self._received.fill(self.inbox, self.cfg.ingest.queue_max)
            items = self._received.take(min(room, PREPARE_CHUNK))
            if not items:
                continue
            try:
                self._clear_retained(items)
            except Exception:  # clearing is a clean-up: a bug in it must not keep the messages from ingest
                log.exception("%s: clearing retained messages failed; ingesting them anyway", self.client_id)
            try:
                batch = classify(items, self.cfg)
            except Exception:  # a bug must not stop ingest; the messages stay un-PUBACKed and come back
                log.exception("%s: classifying %d messages failed; continuing", self.client_id, len(items))
                self.stopping.wait(1.0)
                continue
            self._pending.add(items, batch)

    def _clear_retained(self, items: list[Incoming]) -> None:
        """Delete at the broker what a device published retained where nothing is ever retained: an empty
        retained message on the same topic (the server's login may write under roadmon/#). One clear per topic
        and chunk is enough: it deletes whatever is retained there by then, and a later retained message on
        the topic arrives flagged in turn. The messages themselves go on to be classified as usual."""
        found = to_clear(items)
        if not found:
            return
        for topic, msgs in found.items():
            self.client.publish(topic, b"", qos=1, retain=True)
            metrics.INGEST_RETAINED_CLEARED.labels(kind_of(topic)[0]).inc(len(msgs))
        self._log_retained(found)

    def _log_retained(self, found: dict[str, list[Incoming]]) -> None:
        n = sum(len(msgs) for msgs in found.values())
        self.stats["retained_cleared"] += n
        self._retained_unlogged += n
        now = time.monotonic()
        if now - self._retained_logged_at < RETAINED_LOG_EVERY_S:
            return
        devices = sorted({kind_of(topic)[1] or "?" for topic in found})
        log.warning("%s: cleared %d retained messages at the broker since the last such line, on topics that are "
                    "never retained (latest on %s, from %s): a device's agent or login misbehaves", self.client_id,
                    self._retained_unlogged, next(iter(found)), ", ".join(devices[:5]))
        self._retained_logged_at = now
        self._retained_unlogged = 0

    def waiting(self) -> int:
        """Messages received and not yet committed (in the inbox or the pending batch)."""
        return self.inbox.qsize() + self._received.size + self._pending.size() + self._storing

    def stalled_s(self) -> float:
        """Seconds ingest has not committed while messages wait; 0 when nothing waits."""
        return time.monotonic() - self.last_progress if self.waiting() else 0.0

    def _run(self) -> None:
        """Stage 2: store each batch in one transaction, then acknowledge it."""
        ing = self.cfg.ingest
        while not self.stopping.is_set():
            self._purge_when_due()
            self._learn_curve_when_due()
            if self._defer_pause_s:  # before taking the next batch, so that it fills meanwhile
                self.stopping.wait(self._defer_pause_s)
                self._defer_pause_s = 0.0
            taken = self._pending.take(ing.batch_size, ing.batch_wait_s, self.stopping)
            if taken is None:
                if not self.inbox.qsize() and not self._received.size:
                    self.last_progress = time.monotonic()  # idle is not stalled
                continue
            items, batch = taken
            self._storing = len(items)
            try:
                self._handle(items, batch)
            except Exception:  # a bug must not stop ingest; the batch stays un-PUBACKed and comes back
                log.exception("%s: a batch of %d failed; continuing", self.client_id, len(items))
                self.stopping.wait(1.0)
            finally:
                self._storing = 0
        # Whatever is still pending was never PUBACKed: the broker delivers it again after a restart.

    def _handle(self, items: list[Incoming], batch: Batch) -> None:
        t0 = time.monotonic()
        stored = self._store_with_retry(batch)
        if stored is None:
            return  # stopping while PostGIS is down: nothing acknowledged, the broker keeps it all
        self.last_progress = time.monotonic()
        log.debug("%s: stored a batch of %d messages in %.3f s", self.client_id, len(items), time.monotonic() - t0)
        self._count(batch, stored)
        for device, message in ack_messages(stored, batch).items():
            self.client.publish(topics.ack(device), json.dumps(message), qos=1)
            metrics.INGEST_ACKS.inc()
        later: list[Incoming] = []
        if stored.deferred is not None:
            # Their areas were busy in another worker's transaction: they go into the next batch, unacknowledged.
            later = [m for key in stored.deferred.origin.values() for m in key]
            self._pending.add(later, stored.deferred)
            if len(later) >= len(stored.new_events) + len(stored.new_coverage):
                # Mostly deferred: the other worker holds most of this batch's areas, for about as long as this
                # transaction took. Retrying at once only spins through tiny transactions; wait about that
                # long (without holding anything) while the next batch fills.
                self._defer_pause_s = min(0.5, time.monotonic() - t0)
        waiting = {id(m) for m in later}
        for item in items:
            if item.qos > 0 and id(item) not in waiting:
                self.client.ack(item.mid, item.qos)

    def _purge_when_due(self) -> None:
        """Dead letters past their retention go, and the coming months' partitions are made, every
        PURGE_EVERY_S (each worker; both are idempotent); [retention] is applied every RETENTION_EVERY_S."""
        now = time.monotonic()
        if now >= self._next_retention:
            self._next_retention = now + RETENTION_EVERY_S
            self._apply_retention()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        try:
            partitions.ensure_upcoming(self._db.get(), self.cfg.retention.premake_months)
        except (psycopg.Error, OSError, ConfigError) as exc:  # the default partition takes the rows meanwhile
            log.warning("%s: making the coming months' partitions failed: %s", self.client_id, exc)
            self._db.drop()
        try:
            n = purge_rejected(self._db.get(), self.cfg.ingest.rejected_retention_days)
        except (psycopg.Error, OSError, ConfigError) as exc:  # PostGIS away: the next round tries again
            log.warning("%s: purging old dead letters failed: %s", self.client_id, exc)
            self._db.drop()
            return
        if n:
            log.info("%s: deleted %d dead letters older than %g days", self.client_id, n,
                     self.cfg.ingest.rejected_retention_days)

    def _apply_retention(self) -> None:
        # `fleet-server partitions` does the same as a daily job; a host without one (systemd, Compose) kept every
        # vehicle's tracks, passes and audit rows for ever whatever [retention] said (a data-protection review).
        try:
            partitions.maintain_if_free(self._db.get(), self.cfg.retention)
        except (psycopg.Error, OSError, ConfigError) as exc:  # PostGIS away: tried again the next day or start
            log.warning("%s: applying the retention failed: %s", self.client_id, exc)
            self._db.drop()

    def _learn_curve_when_due(self) -> None:
        """Learn the detection curve (repair_odds) again every aggregate.detection_curve_refresh_s and judge which
        boxes find nothing the fleet finds (blind_boxes), in a thread of its own with its own connection (it reads
        the recent sightings: seconds on a big fleet, which must not hold up the batches); a worker that finds
        another at it leaves it to that one."""
        every = self.cfg.aggregate.detection_curve_refresh_s
        now = time.monotonic()
        if every <= 0 or now < self._next_curve or (self._curve_thread and self._curve_thread.is_alive()):
            return
        self._next_curve = now + every
        self._curve_thread = threading.Thread(target=self._learn_curve, name=f"{self.client_id}-curve", daemon=True)
        self._curve_thread.start()

    def _learn_curve(self) -> None:
        try:
            with connect(self.cfg.database) as conn:
                if repair_odds.refresh_curve(conn, self.cfg.aggregate) is not None:  # None: another worker's turn
                    blind_boxes.judge(conn, self.cfg.aggregate)
        except (psycopg.Error, OSError, ConfigError) as exc:  # the last curve stays; the next round tries again
            log.warning("%s: learning the detection curve failed: %s", self.client_id, exc)

    def _store_with_retry(self, batch: Batch) -> Stored | None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                t0 = time.monotonic()
                stored = self._store(batch)
                metrics.INGEST_BATCH_SECONDS.observe(time.monotonic() - t0)
                return stored
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError, ConfigError) as exc:
                metrics.INGEST_DB_ERRORS.inc()
                self.stats["db_errors"] += 1
                log.warning("%s: storing a batch of %d failed (%s); retrying in %.1f s",
                            self.client_id, len(batch), exc, delay)
                self._db.drop()
                self.stopping.wait(delay)
                delay = min(delay * 2, self.cfg.ingest.db_retry_max_s)
        return None

    def _store(self, batch: Batch) -> Stored:
        try:
            return store_batch(self._db.get(), batch, self.cfg.aggregate, self.reject_policy,
                               self.cfg.ingest.last_seen_resolution_s, self.cfg.ingest.defer_busy_s)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.Error as exc:
            # Valid JSON the database still refuses (a value out of a column's range): find the culprits
            # one by one so the rest is stored and the worker keeps going.
            log.warning("%s: batch refused by PostGIS (%s); storing one message at a time", self.client_id, exc)
            return self._store_one_by_one(batch)

    def _store_one_by_one(self, batch: Batch) -> Stored:
        """Each message in its own transaction; what the database refuses becomes a dead letter."""
        total = Stored()
        singles: list[tuple[Batch, str, str | None, object]] = []
        singles += [(Batch(events=[e], source=batch.source, raw=batch.raw), "event", e[0].get("device_id"), e[0])
                    for e in batch.events]
        singles += [(Batch(coverage=[c], source=batch.source), "coverage", c[0].get("device_id"), c[0])
                    for c in batch.coverage]
        singles += [(Batch(statuses=[st], source=batch.source), "status", st[0], st[1]) for st in batch.statuses]
        singles += [(Batch(results=[r], source=batch.source), "result", r[0], r[2]) for r in batch.results]
        for single, kind, device, obj in singles:
            try:
                part = store_batch(self._db.get(), single, self.cfg.aggregate,
                                   last_seen_resolution_s=self.cfg.ingest.last_seen_resolution_s)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except psycopg.Error as exc:
                raw = json.dumps(obj).encode()
                batch.rejected.append(Rejection(batch.source, None, device, f"database refused: {exc}"[:2000], raw,
                                                message_ref(raw) if kind in ("event", "coverage") else None))
                metrics.count_ingested(kind, "rejected")
                continue
            total.new_events |= part.new_events
            total.new_coverage |= part.new_coverage
            total.conflicts += part.conflicts
            for dev, ids in part.acks.items():
                into = total.acks.setdefault(dev, {"event_ids": [], "coverage_ids": []})
                into["event_ids"] += ids["event_ids"]
                into["coverage_ids"] += ids["coverage_ids"]
        store_batch(self._db.get(), Batch(rejected=batch.rejected, source=batch.source), self.cfg.aggregate,
                    self.reject_policy)
        return total


    def _count(self, batch: Batch, stored: Stored) -> None:
        self.stats["batches"] += 1
        self.stats["stored"] += len(stored.new_events)
        self.stats["duplicates"] += stored.duplicates
        self.stats["rejected"] += len(batch.rejected) + len(stored.conflicts)
        metrics.count_ingested("event", "rejected", len(stored.conflicts))  # the others at classify
        metrics.count_ingested("event", "stored", len(stored.new_events))
        metrics.count_ingested("event", "duplicate", stored.duplicates)
        metrics.count_ingested("coverage", "stored", len(stored.new_coverage))
        metrics.count_ingested("status", "stored", len(batch.statuses))
        metrics.count_ingested("result", "stored", len(batch.results))
