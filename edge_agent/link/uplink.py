"""The uplink: drains the outbox to the broker and marks rows confirmed only when the SERVER says so.

One thread owns the paho client (MQTT 5, callback API v2) and does everything in turn: network I/O, reading
due rows from the outbox, publishing them, applying PUBACKs (-> sent) and server acks (-> confirmed), the
retained heartbeat, and handing commands to the command desk (edge_agent/link/command_desk.py) and publishing
the results it queues: the desk runs the commands and keeps their answers until the server acks them. Keeping it
on one thread means no locks around paho's callbacks and no hidden reconnect logic: connecting is a tenacity
loop (exponential backoff with jitter, capped), and a broker that refuses the login (bad credentials, not
authorised) is asked again only after `auth_retry_s`.

At most the flow control's window of rows are out at once (sent, not yet confirmed). A row the server has
not confirmed within its ack timeout becomes due again and is sent again; the server is idempotent on
event_id, so a broker that drops messages (max_queued_messages, a crash without persistence) costs time, never
data. Window and timeout adapt to how fast the server confirms (edge_agent/link/flow.py), so a fleet-wide
backlog on the server does not turn into a storm of copies.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import sqlite3
import ssl
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type, wait_random_exponential

from edge_agent import __version__
from edge_agent.config.uplink import UplinkConfig
from edge_agent.health import HealthBoard
from edge_agent.link import resend
from edge_agent.link.command_desk import UNANSWERED_FILE, CommandAccepted, CommandDesk, CommandHandler, ResultPublished
from edge_agent.link.flow import FlowControl
from edge_agent.link.heartbeat import boot_stamp, build_status, remove_leftovers, status_file_of, write_status_file
from edge_agent.link.mqtt_tls import CredentialError, apply_login
from edge_agent.link.outbox import Outbox
from roadmon_contract import topics
from roadmon_contract.decode import decode_json

log = logging.getLogger(__name__)

BAD_CREDENTIALS = 134   # MQTT 5 reason codes
NOT_AUTHORISED = 135
SESSION_TAKEN_OVER = 142  # another client connected with our client id (= device id)
# A connection that ends sooner than this after it was made counts as a failed attempt, so a broker that drops
# us at once (or another box with our id, taking the session back and forth) is retried with backoff, not in
# a tight loop that floods the log and the broker.
SHORT_LIVED_S = 10.0
EXPIRE_EVERY_S = 1.0    # how often to look for rows whose confirmation is overdue
# State changes are written in one transaction per interval: SQLite's cost is per transaction and page, so
# many small commits (and the WAL checkpoints they trigger) cost more than the drain itself.
WRITE_EVERY_S = 0.1
SENT_AFTER_S = 1.0      # a PUBACKed row is stored as 'sent' only when the server has not confirmed it by then
SETTLE_S = 2.0          # stopping: how long the server may take to confirm what is in flight
STATUS_PARTS = ("camera", "gnss", "detector", "outbox")  # a change of one rewrites the status file at once
LOCAL_STATUS_LOOK_S = 1.0  # how often to look for such a change (not at every turn of the send loop)


class InFlight(NamedTuple):
    deadline: float   # monotonic time after which the row is sent again
    sent_at: float
    first: bool       # sent for the first time: its ack latency is a clean sample (Karn's rule)


class ConnectFailed(Exception):
    """The broker could not be reached or did not answer; retried with backoff."""


class LoginRefused(Exception):
    """The broker refused this device (state is 'bad_credentials' or 'not_authorised'); retried slowly."""

    def __init__(self, state: str, detail: str) -> None:
        super().__init__(detail)
        self.state = state


def _log_retry(state: RetryCallState) -> None:
    """tenacity's before_sleep: which attempt failed how, and the wait before the next."""
    error = state.outcome.exception() if state.outcome is not None else None
    log.info("uplink: %s; retrying in %.1f s", error, state.next_action.sleep if state.next_action else 0)


class Uplink:
    """Drains OUTBOX to the broker for DEVICE_ID. start() / stop(); on_command(name, handler)."""

    def __init__(self, cfg: UplinkConfig, device_id: str, outbox: Outbox, health: HealthBoard | None = None,
                 *, status_path: Path | None = None) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.outbox = outbox
        self.health = health
        self.status_path = status_path or status_file_of(outbox.path, cfg.status_file)
        self.state = "stopped"
        self.last_error: str | None = None
        self.counters = {"published": 0, "resent": 0, "sent": 0, "confirmed": 0, "publish_refused": 0,
                         "bad_acks": 0, "bad_messages": 0, "retained_ignored": 0, "connects": 0, "refused_logins": 0,
                         "rejected": 0, "server_back": 0}
        # Final command results the server has not acked are kept beside the outbox: a result sent while no ingest
        # worker was connected was lost (7 of 28 in a soak with restarts), and one only in memory died with a box
        # restarted before the server stored its answer to a resend.
        self.desk = CommandDesk(outbox.path.with_name(UNANSWERED_FILE))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Filled by paho callbacks, which run on the uplink thread inside client.loop().
        self._mids: dict[int, tuple[str, str]] = {}
        self.flow = FlowControl(cfg.window, cfg.ack_timeout_s, cfg.ack_timeout_max_s, cfg.window_initial,
                                cfg.adaptive)
        self._outstanding: dict[tuple[str, str], InFlight] = {}
        self._acked: deque[tuple[float, tuple[str, str]]] = deque()  # (when, key) of PUBACKs not yet written
        # cmd/resend: what the server confirmed since a time goes out again (its database restored from a backup).
        self.on_command(resend.COMMAND, functools.partial(resend.handle, outbox))
        self._next_write = 0.0
        self._local_status_due = 0.0  # when the status file is next rewritten (also while offline)
        self._written_states: tuple[Any, ...] | None = None  # STATUS_PARTS as the status file last had them
        self._states_looked = 0.0  # when _local_status_stale last compared them
        self._confirmed: list[tuple[str, str]] = []
        self._rejected: list[tuple[str, str]] = []   # (id, reason) the server will never accept
        self._connack: ReasonCode | None = None
        self._connected = False
        self._disconnect_code: int | None = None
        self._short_lived = 0  # connections in a row that ended within SHORT_LIVED_S
        self._trouble: str | None = None  # why connections keep ending right after login (a taken-over session)
        self._connected_at: float | None = None
        self._mark_failures = 0  # outbox writes of acks in a row that failed (a full disk)
        self._refused: LoginRefused | None = None
        self._client: mqtt.Client | None = None

    # ------------------------------------------------------------------------------------------ public
    def start(self) -> None:
        if self._thread is not None:
            return
        self.desk.start()
        self._stop.clear()
        remove_leftovers(self.status_path)
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10) -> None:
        """Publish 'stopped', disconnect cleanly and end the thread."""
        self._stop.set()
        self.outbox.changed.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.desk.stop()

    def on_command(self, name: str, handler: CommandHandler, on_published: ResultPublished | None = None,
                   accept: CommandAccepted | None = None) -> None:
        """Call HANDLER(payload) in a worker thread for each message on roadmon/v1/<id>/cmd/<NAME>; the dict it
        returns is published on .../cmd/<NAME>/result. A command whose expires_at has passed gets an `expired`
        result without reaching HANDLER. ON_PUBLISHED(result) runs once the broker has each result of NAME.
        ACCEPT(payload) runs before the broker is told the message arrived (paho sends the PUBACK when the
        message callback returns): what it writes to disk is there if the power goes before HANDLER runs."""
        self.desk.on_command(name, handler, on_published, accept)

    def publish_result(self, name: str, result: dict[str, Any]) -> None:
        """Publish RESULT on .../cmd/<NAME>/result although no message asked for it now (an update that was
        queued, resumed after a restart, or a report from start-up); kept until the broker is reachable."""
        self.desk.publish_result(name, result)

    def auth_pause_s(self) -> float:
        """How long to wait after a refused login: auth_retry_s plus up to 20 % jitter, never less (a fleet with
        a revoked password must not hammer the broker in step)."""
        return self.cfg.auth_retry_s * random.uniform(1.0, 1.2)

    def _user(self) -> str:
        return self.cfg.username or self.device_id

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "last_error": self.last_error, "trouble": self.trouble(),
                "outstanding": len(self._outstanding), "answers_waiting": self.desk.answers_waiting(), **self.counters,
                "flow": self.flow.snapshot()}

    def trouble(self) -> str | None:
        """Why the link keeps failing although the broker takes the login (None once a connection holds): in a
        session taken over again and again the state flips between connected and offline, so neither says it."""
        held = self._connected_at is not None and time.monotonic() - self._connected_at >= SHORT_LIVED_S
        return None if self.state == "connected" and held else self._trouble

    # -------------------------------------------------------------------------------------- the thread
    def _run(self) -> None:
        self._set_state("connecting")
        while not self._stop.is_set():
            try:
                client = self._connect()
            except LoginRefused as exc:
                self._set_state(exc.state, str(exc))
                self._wait(self.auth_pause_s())
                continue
            except (ConnectFailed, RetryError):
                continue  # only when stopping: tenacity gives up then
            except Exception as exc:  # a bug must not end the uplink; the outbox keeps everything
                log.exception("uplink: unexpected error while connecting")
                self._set_state("offline", f"unexpected error: {exc}")
                self._client = None
                self._wait(self.cfg.backoff_max_s)
                continue
            self._connected_at = time.monotonic()
            try:
                self._serve(client)
                self._pause_after_short_connection(time.monotonic() - self._connected_at)
            except LoginRefused as exc:
                self._set_state(exc.state, str(exc))
                client.disconnect()
                self._wait(self.auth_pause_s())
            except Exception:  # a bug must not end the uplink; the outbox keeps everything
                log.exception("uplink: unexpected error; reconnecting")
                self._drop_connection(client)
                self._wait(self.cfg.backoff_initial_s)
        self._farewell()
        self._set_state("stopped")

    def _pause_after_short_connection(self, lasted_s: float) -> None:
        if self._stop.is_set():
            return
        self._short_lived = self._short_lived + 1 if lasted_s < SHORT_LIVED_S else 0
        # Mosquitto 2.0.11 closes a taken-over session's socket without the MQTT 5 reason (142), so the pattern
        # (dropped right after login, again and again) is what names the likely cause.
        if self._disconnect_code == SESSION_TAKEN_OVER:
            reason = (f"another client logged in as {self.device_id!r} and took the broker session over: a second "
                      "agent on this box, or another box with this device's id and password (a copied SD card)")
        elif self._short_lived >= 3:
            reason = (f"the broker closed the connection right after login {self._short_lived} times in a row: "
                      f"most likely another client logs in as {self.device_id!r} and takes the session over (a "
                      "second agent on this box, or another box with this device's id and password: a copied SD "
                      "card); the broker's log says 'already connected, closing old connection'")
        else:
            reason = None
        self._trouble = reason
        if reason:
            self._set_state("offline", reason)
            if self._short_lived in (1, 3, 10) or self._short_lived % 100 == 0:  # now and then, not per retry
                log.error("uplink: %s", reason)
        if self._short_lived:
            pause = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2 ** min(self._short_lived - 1, 16))
            self._wait(pause * random.uniform(0.5, 1.0))

    def _pause(self, seconds: float) -> None:
        """_wait as tenacity's sleep, which wants nothing back (it asks `stop` whether to go on)."""
        self._wait(seconds)

    def _wait(self, seconds: float) -> bool:
        """Wait between connection attempts (True once stopping). The local status file stays current meanwhile:
        `edge-agent status` reads it, and a box out of network for hours is offline, not "not running"."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            now = time.monotonic()
            if self._local_status_stale(now):
                self._write_local_status()
            if now >= deadline:
                return False
            self._stop.wait(min(deadline, self._local_status_due, now + LOCAL_STATUS_LOOK_S) - now)
        return True

    def _local_status_stale(self, now: float) -> bool:
        """Whether the status file is due: every heartbeat, and at once when a part of the box changed state (a
        receiver unplugged read "ok" in `status` and doctor for up to heartbeat_s, 30 s)."""
        if now >= self._local_status_due:
            return True
        if now < self._states_looked + LOCAL_STATUS_LOOK_S:
            return False
        self._states_looked = now
        return self._states() != self._written_states

    def _states(self) -> tuple[Any, ...]:
        snap = self.health.snapshot() if self.health is not None else {}
        return tuple(snap.get(part) for part in STATUS_PARTS)

    def _write_local_status(self, status: dict[str, Any] | None = None) -> None:
        if status is None:
            # A clean stop is "stopped" here too: the file said "offline", and `status` read the stopped agent's
            # last words as live ("GNSS ok, last fix 0 s ago") until they went stale.
            state = {"connected": "online", "stopped": "stopped"}.get(self.state, "offline")
            status = build_status(state, self.device_id, self.outbox, self.health, broker=self.state)
        self._written_states = self._states()
        write_status_file(self.status_path, status | {"uplink": self.snapshot(), "written": boot_stamp()})
        self._local_status_due = time.monotonic() + self.cfg.heartbeat_s

    def _connect(self) -> mqtt.Client:
        retrying = Retrying(
            wait=wait_random_exponential(multiplier=self.cfg.backoff_initial_s, max=self.cfg.backoff_max_s),
            retry=retry_if_exception_type(ConnectFailed),
            stop=lambda _state: self._stop.is_set(),
            sleep=self._pause,
            before_sleep=_log_retry,
            reraise=True,
        )
        return retrying(self._connect_once)

    def _connect_once(self) -> mqtt.Client:
        client = self._client or self._make_client()
        if client is None:
            raise LoginRefused("bad_credentials", self.last_error or "credentials unavailable")
        # No state change here: a box that is offline or refused stays so until a connection succeeds, so the
        # status (and the log) does not flap on every retry.
        self._connack, self._connected, self._disconnect_code = None, False, None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        try:
            client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, clean_start=False,
                           properties=props)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._set_state("offline", f"{self.cfg.host}:{self.cfg.port}: {exc}")
            raise ConnectFailed(f"cannot reach {self.cfg.host}:{self.cfg.port}: {exc}") from None
        deadline = time.monotonic() + self.cfg.connect_timeout_s
        while self._connack is None and time.monotonic() < deadline and not self._stop.is_set():
            if client.loop(0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS and self._connack is None:
                break
        code = self._connack
        if code is None:
            self._drop_connection(client)
            self._set_state("offline", "no CONNACK from the broker")
            raise ConnectFailed("no CONNACK from the broker")
        if code.is_failure:
            self._drop_connection(client)
            if code.value in (BAD_CREDENTIALS, NOT_AUTHORISED):
                self._client = None  # read the credential files again next time: the technician may fix them
                # Mosquitto answers a wrong password with 135 (not authorised): at CONNECT both mean the login.
                self.counters["refused_logins"] += 1
                raise LoginRefused("bad_credentials", f"broker refused the login of {self._user()!r}: {code}; "
                                                      f"check the device id and the password file")
            self._set_state("offline", f"broker refused the connection: {code}")
            raise ConnectFailed(f"broker refused the connection: {code}")
        return client

    def _make_client(self) -> mqtt.Client | None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5)
        try:
            apply_login(client, self.cfg, self.device_id)
        except CredentialError as exc:
            self.last_error = str(exc)
            log.error("uplink: %s", exc)
            return None
        # Our window bounds what is in flight; paho's own limit rescans every queued message on each PUBACK
        # (quadratic in the window), so it is switched off.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        will = {"state": "offline", "device_id": self.device_id, "version": __version__}
        client.will_set(topics.status(self.device_id), json.dumps(will), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client
        return client

    def _serve(self, client: mqtt.Client) -> None:
        """Drain, confirm and beat while the connection lasts."""
        self.counters["connects"] += 1
        self.flow.on_reconnect()
        # retainHandling 2: a retained command (a mistaken `mosquitto_pub -r`, or a login stolen once) was carried
        # out again at every reconnect, surviving broker restarts and password changes
        sub_opts = SubscribeOptions(qos=1, noLocal=True, retainHandling=2)
        client.subscribe([(topics.ack(self.device_id), sub_opts),
                          (topics.cmd(self.device_id, "+"), sub_opts)])
        self._set_state("connected")
        self._publish_status(client, "online")
        next_beat = time.monotonic() + self.cfg.heartbeat_s
        next_expiry = time.monotonic() + EXPIRE_EVERY_S
        more = True
        while self._connected and not self._stop.is_set():
            busy = more and self._room() >= min(self.cfg.batch, max(1, self.flow.window // 4))
            if client.loop(0.0 if busy else 0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if self._refused is not None:
                refused, self._refused = self._refused, None
                raise refused
            now = time.monotonic()
            if now >= self._next_write or len(self._confirmed) >= self.cfg.window // 2:
                self._apply_marks()
                self._next_write = now + WRITE_EVERY_S
            if now >= next_expiry:
                self._expire(now)
                self.desk.results_again(now, self.flow.timeout_s)
                next_expiry = now + EXPIRE_EVERY_S
                more = True
            if self.outbox.changed.is_set():
                self.outbox.changed.clear()
                more = True
            if more and self._room() >= min(self.cfg.batch, max(1, self.flow.window // 4)):
                more = self._publish_due(client)
            self._publish_results(client)
            if now >= next_beat:
                self._publish_status(client, "online")
                next_beat = now + self.cfg.heartbeat_s
            elif self._local_status_stale(now):
                self._write_local_status()
        if not self._stop.is_set():
            self._set_state("offline", self.last_error or "connection lost")

    def _room(self) -> int:
        return self.flow.window - len(self._outstanding)

    def _publish_due(self, client: mqtt.Client) -> bool:
        """Send up to one batch of due rows; True when the outbox may have more."""
        room = min(self.cfg.batch, self._room())
        if room <= 0:  # the window shrank below what is in flight (a timeout)
            return True
        timeout = self.flow.timeout_s
        try:
            messages = self.outbox.due(room, timeout)
        except sqlite3.OperationalError as exc:  # disk full or locked: the next expiry tick tries again
            log.warning("uplink: could not read the outbox: %s", exc)
            return False
        now = time.monotonic()
        deadline = now + timeout
        topic = {"event": topics.event(self.device_id), "coverage": topics.coverage(self.device_id)}
        for msg in messages:
            info = client.publish(topic[msg.kind], msg.body, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.info("uplink: publish failed (%s); will resend", mqtt.error_string(info.rc))
                break
            key = (msg.kind, msg.id)
            self._mids[info.mid] = key
            self._outstanding[key] = InFlight(deadline, now, msg.attempts == 1)
            self.counters["published"] += 1
            if msg.attempts > 1:
                self.counters["resent"] += 1
        return len(messages) == room

    def _apply_marks(self, final: bool = False) -> None:
        """Write server acks (-> confirmed) and PUBACKs (-> sent). A PUBACK is written only when its row is
        still unconfirmed SENT_AFTER_S later: usually the server's ack comes first and 'sent' is never stored,
        which halves the drain's writes. (Losing a 'sent' costs nothing: such a row is sent again.)"""
        # The lists are only touched in this thread (paho calls back from client.loop): on a failed write they
        # stay as they are and the next write tries them again.
        if self._rejected:
            try:
                self.counters["rejected"] += self.outbox.mark_rejected(self._rejected)
                self._rejected = []
            except sqlite3.OperationalError as exc:
                self._mark_failed("could not store %d rejections (%s); retrying", len(self._rejected), exc)
        if self._confirmed:
            try:
                self.counters["confirmed"] += self.outbox.mark_confirmed(self._confirmed)
                self._confirmed = []
                self._mark_failures = 0
            except sqlite3.OperationalError as exc:  # disk full, or locked too long: keep them and try again
                self._mark_failed("could not store %d confirmations (%s); retrying", len(self._confirmed), exc)
                return
        cutoff = float("inf") if final else time.monotonic() - SENT_AFTER_S
        sent = []
        while self._acked and self._acked[0][0] <= cutoff:
            key = self._acked.popleft()[1]
            if key in self._outstanding:
                sent.append(key)
        if sent:
            try:
                self.counters["sent"] += self.outbox.mark_sent(sent)
            except sqlite3.OperationalError as exc:  # 'sent' is only informative; a confirmation follows
                log.warning("uplink: could not store %d PUBACKs: %s", len(sent), exc)

    def _mark_failed(self, message: str, *args: object) -> None:
        # Retried every WRITE_EVERY_S: on a full disk that was 10 warnings a second into a journal that often
        # lives on the same disk. Said on the first failure and every 100th while it lasts.
        self._mark_failures += 1
        level = logging.WARNING if self._mark_failures % 100 == 1 else logging.DEBUG
        log.log(level, "uplink: " + message + " (failure %d in a row)", *args, self._mark_failures)

    def _expire(self, now: float) -> None:
        overdue = [key for key, pending in self._outstanding.items() if pending.deadline <= now]
        newest = max((self._outstanding[key].sent_at for key in overdue), default=None)
        for key in overdue:
            del self._outstanding[key]
        if overdue:
            self.flow.on_timeout(newest, now)
            log.info("uplink: %d rows unconfirmed in time; sending them again (window now %d, timeout %.0f s)",
                     len(overdue), self.flow.window, self.flow.timeout_s)
        if len(self._mids) > 4 * self.cfg.window:  # PUBACKs that never came (a dead connection's messages)
            live = set(self._outstanding)
            self._mids = {mid: key for mid, key in self._mids.items() if key in live}

    def _publish_status(self, client: mqtt.Client, state: str) -> dict[str, Any]:
        status = build_status(state, self.device_id, self.outbox, self.health, broker=self.state)
        # Backing off (rows went unconfirmed): the server answers a status that asks with `status_seen` in an ack,
        # the sign that it is back (a 6-minute server outage took 4.5 minutes more to resume, and the wait doubles
        # with every round, up to ack_timeout_max_s).
        # Kept answers of an earlier run ask for one too (CommandDesk.awaiting_server).
        status["awaiting_server"] = self.flow.backoff > 1 or self.desk.awaiting_server()
        client.publish(topics.status(self.device_id), json.dumps(status), qos=1, retain=True)
        self._write_local_status(status)
        return status

    def _publish_results(self, client: mqtt.Client) -> None:
        for name, result in self.desk.results_to_send():
            info = client.publish(topics.cmd_result(self.device_id, name), json.dumps(result, default=str), qos=1)
            self.desk.sent(name, result, info.mid)

    def _farewell(self) -> None:
        client = self._client
        if client is None or not self._connected:
            return
        try:
            self._settle(client)
            self._publish_results(client)
            self._apply_marks()  # the server's last acks: the farewell status counted those rows as still queued
            status = build_status("stopped", self.device_id, self.outbox, self.health, broker="stopped")
            info = client.publish(topics.status(self.device_id), json.dumps(status), qos=1, retain=True)
            deadline = time.monotonic() + 2
            while not info.is_published() and time.monotonic() < deadline and self._connected:
                client.loop(0.05)
            self._apply_marks(final=True)
            client.disconnect()
            client.loop(0.1)
        except Exception:  # stopping must always finish
            log.exception("uplink: error while saying goodbye")

    def _settle(self, client: mqtt.Client) -> None:
        """Stopping: send what the last moments added (the coverage record a stop closes) and give the server up to
        SETTLE_S to confirm what is in flight. Else a clean stop left that record `sent` every time: waiting in
        `queue stats` and doctor until the next start sent it again."""
        if self._room() > 0:
            self._publish_due(client)
        deadline = time.monotonic() + SETTLE_S
        while self._outstanding and self._connected and time.monotonic() < deadline:
            client.loop(0.05)

    def _drop_connection(self, client: mqtt.Client) -> None:
        self._connected = False
        try:
            client.disconnect()
            client.loop(0.01)
        except Exception:  # already gone
            log.debug("uplink: disconnect of a dead connection failed", exc_info=True)

    def _set_state(self, state: str, error: str | None = None) -> None:
        changed = state != self.state
        self.state = state
        if error is not None:
            self.last_error = error
        if self.health is not None:
            self.health.update(uplink=state)
        if changed:
            log.log(logging.WARNING if state in ("bad_credentials", "not_authorised") else logging.INFO,
                    "uplink: %s%s", state, f" ({error})" if error and state != "connected" else "")
            self._write_local_status()

    # ------------------------------------------------------------------------------- paho callbacks
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Any) -> None:
        self._connack = reason_code
        self._connected = not reason_code.is_failure

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                       properties: Any) -> None:
        self._connected = False
        self._disconnect_code = reason_code.value
        if reason_code.is_failure:
            self.last_error = f"disconnected: {reason_code}"

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Any) -> None:
        key = self._mids.pop(mid, None)
        if key is None:
            self.desk.result_published(mid, reason_code.is_failure)
            return
        if reason_code.is_failure:
            # The broker refused this message (ACL): the row stays pending; stop and ask again slowly.
            self.counters["publish_refused"] += 1
            self._refused = LoginRefused("not_authorised",
                                         f"broker refused a publish on the {key[0]} topic of {self.device_id!r}: "
                                         f"{reason_code}; the broker's ACL does not let this login write there")
            return
        self._acked.append((time.monotonic(), key))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Any) -> None:
        if any(rc.is_failure for rc in reason_codes):
            # Without the ack topic nothing can ever be confirmed: treat it as a refusal. (Mosquitto grants
            # any subscription and filters on delivery instead, so there a refused publish is what shows it.)
            self._refused = LoginRefused("not_authorised", "broker refused the subscription to the ack topic")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        kind, device, command = topics.parse(msg.topic)
        if device != self.device_id:
            return
        if msg.retain:  # kept by the broker from before: a command or ack is an event, never a state to replay
            self.counters["retained_ignored"] += 1
            log.warning("uplink: ignoring a retained message on %s (commands are never retained)", msg.topic)
            return
        payload = bytes(msg.payload)  # paho types it bytes or bytearray; bytes() of bytes is the same object
        try:
            if kind == "ack":
                self._on_ack(payload)
            elif kind == "cmd" and command:
                self.desk.receive(command, payload)
        except Exception:  # raised into paho's loop, one message took the uplink down until the broker dropped it
            self.counters["bad_messages"] += 1
            log.exception("uplink: a message on %s could not be handled; it is dropped", msg.topic)

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = decode_json(payload)
            items = [("event", str(i)) for i in ack.get("event_ids", [])]
            items += [("coverage", str(i)) for i in ack.get("coverage_ids", [])]
            rejected = [(str(r["id"]), str(r.get("reason", ""))) for r in ack.get("rejected", [])]
            answered = [str(c) for c in ack.get("command_ids", [])]
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            self.counters["bad_acks"] += 1
            log.warning("uplink: ignoring an ack that is not {event_ids, coverage_ids, rejected}: %s", exc)
            return
        self._confirmed.extend(items)
        if "command_ids" in ack:
            self.desk.server_acked(answered)
        now = time.monotonic()
        if "status_seen" in ack and self.flow.backoff > 1:
            self._server_back()
        for key in items:  # the window opens at once; the rows are marked in the next write (<= WRITE_EVERY_S)
            pending = self._outstanding.pop(key, None)
            if pending is not None:
                self.flow.on_ack(now - pending.sent_at if pending.first else None)
        if rejected:
            self._rejected.extend(rejected)
            for item_id, reason in rejected:
                log.warning("uplink: the server rejected %s for good: %s", item_id, reason)
                self._outstanding.pop(("event", item_id), None)
                self._outstanding.pop(("coverage", item_id), None)

    def _server_back(self) -> None:
        """The server answered while rows waited out a backed-off timeout: it is back (a restart, PostGIS back).
        What it has not confirmed is sent again now, as after a reconnect, instead of after the doubled wait."""
        log.info("uplink: the server answers again; sending the %d rows it has not confirmed", len(self._outstanding))
        self.flow.on_reconnect()
        self._outstanding.clear()
        try:
            self.outbox.retry()  # every unconfirmed row due now (each waited for its backed-off due time)
        except sqlite3.OperationalError as exc:  # the rows come due at their own time instead
            log.warning("uplink: could not make the unconfirmed rows due: %s", exc)
        self.counters["server_back"] += 1
