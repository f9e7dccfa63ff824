"""The command desk: carries out the server's remote commands and keeps their answers until the server has them.

The uplink owns the MQTT client and hands the desk what arrives on .../cmd/<name>; the desk runs the command's
handler in a worker thread and queues the answer, which the uplink publishes on .../cmd/<name>/result and reports
back (sent, PUBACKed, acked by the server). A final answer is kept, in memory and in a journal beside the outbox,
until the server acks its command id, and is sent again every ack timeout meanwhile: an answer sent while no
ingest worker was connected was lost, and so was one whose box restarted before the server stored its resend.

Handlers and their done callbacks run in worker threads and touch only the results queue and the handled ids;
everything else runs on the uplink thread, so the journal needs no lock.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from edge_agent.durable import write_durably
from roadmon_contract.commands import expired_reason, is_interim
from roadmon_contract.decode import decode_json

log = logging.getLogger(__name__)

MAX_UNANSWERED = 200    # final command results kept for sending again until the server acks them
RESULT_ATTEMPTS = 20    # sends of one result before giving up (a server that stores but never says so)
UNANSWERED_FILE = "unanswered-results.json"  # beside the outbox
MAX_HANDLED = 500       # command ids remembered as carried out (a repeat delivery is not run twice)

CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]
# Called on the uplink thread (keep it quick) once the broker has a command's result (PUBACK).
ResultPublished = Callable[[dict[str, Any]], None]
# Records a command on disk before the broker learns it arrived (model updates: their journal).
CommandAccepted = Callable[[dict[str, Any]], None]


class Unanswered(NamedTuple):
    """A final result the server has not acked yet."""

    name: str
    result: dict[str, Any]
    sent_at: float   # monotonic; 0.0 for one read from the journal, so it is due at once
    attempts: int    # sends so far, across restarts: RESULT_ATTEMPTS holds for a box that restarts often


class CommandDesk:
    """Runs the commands registered with on_command() and keeps their answers until the server acks them."""

    def __init__(self, journal_path: Path) -> None:
        self._journal_path = journal_path
        self._unanswered: dict[str, Unanswered] = load_unanswered(journal_path)
        self._handled: OrderedDict[str, dict | None] = OrderedDict()  # command ids run in this process: their answer
        self._server_acks_results = False  # an older server never acks them: then nothing is sent again
        self._handlers: dict[str, CommandHandler] = {}
        self._on_published: dict[str, ResultPublished] = {}
        self._on_accept: dict[str, CommandAccepted] = {}
        self._result_mids: dict[int, tuple[str, dict[str, Any]]] = {}  # results the broker has not PUBACKed
        self._workers: ThreadPoolExecutor | None = None   # command handlers run here, from start() to stop()
        self._results: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

    # ------------------------------------------------------------------------------------------ public
    def start(self) -> None:
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="uplink-cmd")

    def stop(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=False, cancel_futures=True)
            self._workers = None

    def on_command(self, name: str, handler: CommandHandler, on_published: ResultPublished | None = None,
                   accept: CommandAccepted | None = None) -> None:
        """See Uplink.on_command."""
        if not name or "/" in name or "+" in name or "#" in name:
            raise ValueError(f"invalid command name {name!r}")
        self._handlers[name] = handler
        if on_published is not None:
            self._on_published[name] = on_published
        if accept is not None:
            self._on_accept[name] = accept

    def publish_result(self, name: str, result: dict[str, Any]) -> None:
        """Queue RESULT for .../cmd/<NAME>/result; safe from any thread."""
        self._results.put((name, result))

    def answers_waiting(self) -> int:
        return len(self._unanswered)

    def awaiting_server(self) -> bool:
        """Kept answers of an earlier run wait for an ack that says the server acks results: a parked box that sent
        nothing else never got one, so its answers waited until the van drove again."""
        return bool(self._unanswered) and not self._server_acks_results

    # ------------------------------------------------------------------------------- a command arrives
    def receive(self, name: str, payload: bytes) -> None:
        """Carry out the command NAME with PAYLOAD (called in the message callback, before paho PUBACKs it)."""
        handler = self._handlers.get(name)
        if handler is None:
            self._results.put((name, {"ok": False, "error": f"unknown command {name!r}"}))
            return
        try:
            args = decode_json(payload or b"{}")  # bounded: JSON nested 1,000 deep raised RecursionError
            if not isinstance(args, dict):
                raise ValueError("the payload must be a JSON object")
            expired = expired_reason(args)
        except ValueError as exc:
            self._results.put((name, {"ok": False, "error": f"bad payload: {exc}"}))
            return
        if expired:
            log.warning("uplink: command %s not carried out: %s", name, expired)
            self._results.put((name, _with_id({"ok": False, "status": "expired", "reason": expired}, args)))
            return
        command_id = args.get("command_id")
        if isinstance(command_id, str) and self._repeat(name, command_id):
            return
        accept = self._on_accept.get(name)
        if accept is not None:
            try:
                accept(args)
            except Exception:  # the handler still runs: a journal that could not be written is only less safe
                log.exception("uplink: command %s could not be recorded before it was acknowledged", name)
        workers = self._workers
        if workers is None:
            return  # stopping: no result is sent, so the server sees the command unanswered and may repeat it
        future = workers.submit(handler, args)
        if isinstance(command_id, str):
            self._handled[command_id] = None
            while len(self._handled) > MAX_HANDLED:
                self._handled.popitem(last=False)
        future.add_done_callback(lambda f: self._done(name, command_id, _with_id(_result_of(name, f), args)))

    def _done(self, name: str, command_id: Any, result: dict[str, Any]) -> None:
        if isinstance(command_id, str) and command_id in self._handled:
            self._handled[command_id] = result
        self._results.put((name, result))

    def _repeat(self, name: str, command_id: str) -> bool:
        """True for a command id this agent has carried out or is carrying out (one `cmd send` delivered twice
        ran twice: a resend's second run answered "0 rows" and the summary counted that): its answer is sent
        again, if there is one yet, and nothing is done."""
        kept = self._unanswered.get(command_id)
        if kept is None and command_id not in self._handled:
            return False
        result = kept.result if kept is not None else self._handled.get(command_id)
        log.warning("uplink: command %s (%s) was delivered again; not carried out twice", command_id, name)
        if result is not None:
            self._results.put((name, result))
        return True

    # ----------------------------------------------------------------------------- answers going out
    def results_to_send(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The queued results, one at a time; tell sent() about each once it is published."""
        while True:
            try:
                yield self._results.get_nowait()
            except queue.Empty:
                return

    def sent(self, name: str, result: dict[str, Any], mid: int) -> None:
        """RESULT of NAME went to the client as message MID: wait for its PUBACK, and keep a final one until the
        server acks it."""
        command_id = result.get("command_id") if isinstance(result, dict) else None
        again = isinstance(command_id, str) and command_id in self._unanswered
        if name in self._on_published and not again:
            # A result sent again only reports: a config-reload's "restarting" sent again after the restart
            # stopped the agent a second time, on the config it already ran.
            self._result_mids[mid] = (name, result)
        if isinstance(command_id, str) and not is_interim(name, result):
            kept = self._unanswered.get(command_id)
            attempts = kept.attempts if kept is not None else 0
            self._unanswered[command_id] = Unanswered(name, result, time.monotonic(), attempts + 1)
            while len(self._unanswered) > MAX_UNANSWERED:
                self._unanswered.pop(next(iter(self._unanswered)))
            self._save_unanswered()  # with its count: the limit of RESULT_ATTEMPTS holds across restarts

    def result_published(self, mid: int, failed: bool) -> None:
        """The broker answered message MID (the uplink's own rows excluded): run its command's after-publish step."""
        done = self._result_mids.pop(mid, None)
        if done is None or failed:
            return
        name, result = done
        try:
            self._on_published[name](result)
        except Exception:  # a handler's bookkeeping must not end the uplink
            log.exception("uplink: after-publish step of command %s failed", name)

    def server_acked(self, command_ids: list[str]) -> None:
        """The server stored the answers to COMMAND_IDS (an ack that carries command_ids at all says it acks them)."""
        self._server_acks_results = True
        answered = [command_id for command_id in command_ids if self._unanswered.pop(command_id, None) is not None]
        if answered:
            self._save_unanswered()

    def results_again(self, now: float, timeout_s: float) -> None:
        """Queue again the final results the server has not acked within TIMEOUT_S, up to RESULT_ATTEMPTS sends
        each (it stores a repeat once)."""
        if not self._server_acks_results:
            return
        for command_id, kept in list(self._unanswered.items()):
            if kept.attempts >= RESULT_ATTEMPTS:
                log.warning("uplink: the result of command %s was never acknowledged; giving up", command_id)
                del self._unanswered[command_id]
                self._save_unanswered()
            elif now - kept.sent_at >= timeout_s:
                self._unanswered[command_id] = kept._replace(sent_at=now)  # not queued twice while it waits to go out
                self._results.put((kept.name, kept.result))

    # ------------------------------------------------------------------------------------ the journal
    def _save_unanswered(self) -> None:
        # The on-disk shape, {command_id: [name, result, attempts]}, is what boxes in the field have: keep it.
        kept = {command_id: [answer.name, answer.result, answer.attempts]
                for command_id, answer in self._unanswered.items()}
        try:
            if kept:
                write_durably(self._journal_path, json.dumps(kept, default=str))
            else:
                self._journal_path.unlink(missing_ok=True)
        except OSError as exc:  # a full or read-only disk: the answers stay in memory, as before
            log.warning("uplink: cannot keep the unanswered command results in %s: %s", self._journal_path, exc)


def load_unanswered(path: Path) -> dict[str, Unanswered]:
    """The final command results a stopped agent had sent and the server had not acked, due again at once (once
    the server is known to ack results); a damaged or foreign file is ignored (the answers are bookkeeping: the
    rows a resend asked for are in the outbox)."""
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        return {str(command_id): Unanswered(str(name), result, 0.0, int(attempts))
                for command_id, (name, result, attempts) in kept.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("uplink: ignoring %s: %s", path, exc)
        return {}


def _with_id(result: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """RESULT naming the command it answers (the server's command_id), so `cmd results` can pair them."""
    if "command_id" in payload and "command_id" not in result:
        result["command_id"] = payload["command_id"]
    return result


def _result_of(name: str, future: Future) -> dict[str, Any]:
    try:
        result = future.result()
    except Exception as exc:
        log.exception("command %s failed", name)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return result if isinstance(result, dict) else {"ok": True, "result": result}
