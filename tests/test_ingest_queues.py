"""Ingest's in-memory stages on their own: received messages handed out round-robin by device, the pending
batch that closes by count, by bytes or by age, and the backlog a worker reports (metrics, drain, health)."""

from __future__ import annotations

import queue
import threading
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from fleet_server import ingest
from fleet_server.config import ServerConfig
from fleet_server.ingest import Incoming, IngestWorker, _ByDevice, _Pending
from fleet_server.store import Batch

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def msg(device: str, n: int, size: int = 10) -> Incoming:
    return Incoming(f"roadmon/v1/{device}/event", bytes(size), n, 1, AT)


def test_received_messages_go_round_robin_by_device_and_never_more_than_asked() -> None:
    inbox: queue.Queue[Incoming] = queue.Queue()
    for m in [msg("flood", n) for n in range(5)] + [msg("b", 10), msg("c", 20), msg("b", 11)]:
        inbox.put(m)
    received = _ByDevice()
    received.fill(inbox, 100)
    assert received.size == 8 and inbox.qsize() == 0
    first = received.take(4)
    assert [(m.topic.split("/")[2], m.mid) for m in first] == [("flood", 0), ("b", 10), ("c", 20), ("flood", 1)]
    assert received.size == 4
    rest = received.take(10)
    assert [m.mid for m in rest] == [2, 11, 3, 4]  # one each in turn: b does not wait behind the flood
    assert received.size == 0 and received.take(3) == []


def test_filling_stops_at_the_limit_and_leaves_the_rest_in_the_inbox() -> None:
    inbox: queue.Queue[Incoming] = queue.Queue()
    for n in range(7):
        inbox.put(msg("a", n))
    received = _ByDevice()
    received.fill(inbox, 5)
    assert (received.size, inbox.qsize()) == (5, 2)


def test_the_pending_batch_closes_at_its_size_or_at_the_byte_cap(monkeypatch) -> None:
    stopping = threading.Event()
    pending = _Pending()
    pending.add([msg("a", n) for n in range(3)], Batch())
    assert pending.wait_for_room(5, stopping) == 2
    assert pending.wait_for_room(4, stopping) == 1
    items, _ = pending.take(3, 60.0, stopping)  # full by count: no waiting for the 60 s
    assert [m.mid for m in items] == [0, 1, 2] and pending.size() == 0
    monkeypatch.setattr(ingest, "BATCH_MAX_BYTES", 1000)
    pending.add([msg("a", 1, size=600)], Batch())
    assert pending.wait_for_room(100, stopping) == 99  # 600 bytes: room left
    pending.add([msg("a", 2, size=600)], Batch())
    assert pending._full(100)  # 1,200 bytes is over the cap
    items, _ = pending.take(100, 60.0, stopping)  # so it is taken without waiting for the 60 s
    assert [m.mid for m in items] == [1, 2]
    pending.add([msg("a", 3, size=999)], Batch())  # the byte count started again from zero
    assert not pending._full(100)
    pending.add([msg("a", 4, size=1)], Batch())
    assert pending._full(100)  # exactly at the cap


def test_a_workers_backlog_counts_every_stage() -> None:
    worker = IngestWorker(ServerConfig())
    assert (worker.waiting(), worker.stalled_s()) == (0, 0.0)  # a fresh worker has nothing waiting, is not stalled
    assert set(worker.stats.values()) == {0}
    for n in range(3):
        worker.inbox.put(msg("a", n))
    inbox: queue.Queue[Incoming] = queue.Queue()
    for n in range(4):
        inbox.put(msg("b", n))
    worker._received.fill(inbox, 10)
    worker._pending.add([msg("c", n) for n in range(5)], Batch())
    worker._storing = 6
    assert worker.waiting() == 3 + 4 + 5 + 6


def test_the_subscription_counts_as_confirmed_only_by_its_own_suback() -> None:
    """Message ids run to 65535: the SUBACK is matched by value (a large id is a different int object)."""
    from paho.mqtt.reasoncodes import ReasonCode

    worker = IngestWorker(ServerConfig())
    worker._subscribe_mid = int("40000")
    granted = [ReasonCode(9, "Granted QoS 1")]
    worker._on_subscribe(None, None, int("39999"), granted, None)
    assert not worker.subscribed.is_set()
    worker._on_subscribe(None, None, int("40000"), [ReasonCode(9, "Not authorized")], None)
    assert not worker.subscribed.is_set()  # refused
    worker._on_subscribe(None, None, int("40000"), granted, None)
    assert worker.subscribed.is_set()


def test_a_delivery_waits_for_room_in_a_full_inbox_instead_of_being_dropped() -> None:
    """Back-pressure: the MQTT thread blocks while the inbox is full (the broker keeps the rest); a delivery
    is never dropped, or it would stay un-PUBACKed and unstored until the next reconnect."""

    class FullOnce(queue.Queue):
        def put(self, item, block=True, timeout=None):
            if not getattr(self, "refused", False):
                self.refused = True
                raise queue.Full
            super().put(item, block, timeout)

    worker = IngestWorker(ServerConfig())
    worker.inbox = FullOnce()
    delivery = type("Msg", (), {"topic": "roadmon/v1/veh-1/event", "payload": b"{}", "mid": 7, "qos": 1,
                                "retain": False})()
    worker._on_message(None, None, delivery)
    assert worker.inbox.refused and worker.inbox.get_nowait().mid == 7


def test_leaving_the_group_counts_only_its_own_unsuback() -> None:
    worker = IngestWorker(ServerConfig())
    worker._unsubscribe_mid = int("40000")
    worker._on_unsubscribe(None, None, int("39999"), [], None)
    assert not worker.unsubscribed.is_set()
    worker._on_unsubscribe(None, None, int("40000"), [], None)
    assert worker.unsubscribed.is_set()


def test_an_unsuback_handled_before_unsubscribe_returns_still_ends_the_wait(caplog) -> None:
    """The network thread may handle the UNSUBACK before unsubscribe() has returned its mid to the stopping
    thread (a broker nearby answers within a millisecond): the drain must not then wait all of drain_s for it."""
    worker = IngestWorker(ServerConfig())

    def unsubscribe_answered_at_once(topics: list[str]) -> tuple[mqtt.MQTTErrorCode, int]:
        worker._on_unsubscribe(None, None, 41, [], None)  # on the network thread, before the mid is known
        return mqtt.MQTT_ERR_SUCCESS, 41

    worker.client.unsubscribe = unsubscribe_answered_at_once  # type: ignore[method-assign]
    t0 = time.monotonic()
    worker._drain(3.0)
    assert time.monotonic() - t0 < 1.5 and worker.unsubscribed.is_set()
    assert "no UNSUBACK" not in caplog.text


def test_a_drain_does_not_wait_for_an_unsubscribe_that_could_not_be_sent(caplog) -> None:
    worker = IngestWorker(ServerConfig())
    worker.client.unsubscribe = lambda topics: (mqtt.MQTT_ERR_NO_CONN, None)  # type: ignore[method-assign]
    t0 = time.monotonic()
    worker._drain(3.0)
    assert time.monotonic() - t0 < 0.5 and "could not unsubscribe" in caplog.text


def test_a_worker_is_stalled_for_as_long_as_messages_wait_without_a_commit() -> None:
    worker = IngestWorker(ServerConfig())
    worker.last_progress = time.monotonic() - 42.0
    assert worker.stalled_s() == 0.0  # nothing waits: idle, not stalled
    worker.inbox.put(msg("a", 1))
    assert 42.0 <= worker.stalled_s() < 43.0
