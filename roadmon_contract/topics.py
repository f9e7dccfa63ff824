"""MQTT topic names (contract v1)."""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "roadmon/v1"


def event(device_id: str) -> str:
    return f"{PREFIX}/{device_id}/event"


def coverage(device_id: str) -> str:
    return f"{PREFIX}/{device_id}/coverage"


def status(device_id: str) -> str:
    return f"{PREFIX}/{device_id}/status"


def ack(device_id: str) -> str:
    return f"{PREFIX}/{device_id}/ack"


def cmd(device_id: str, name: str) -> str:
    return f"{PREFIX}/{device_id}/cmd/{name}"


def cmd_result(device_id: str, name: str) -> str:
    return f"{PREFIX}/{device_id}/cmd/{name}/result"


# `edge-agent doctor` proves that a device may write under its id by publishing a "result" of this command,
# the one topic pattern every device may write besides its data (the broker's ACL). The server never sends a
# command of this name and ingest acknowledges such a message without storing it: it answers nothing.
PROBE_COMMAND = "probe"


def probe(device_id: str) -> str:
    return cmd_result(device_id, PROBE_COMMAND)


def shared(kind: str, group: str = "ingest") -> str:
    """Shared-subscription filter so several ingest workers split one kind of message."""
    return f"$share/{group}/{PREFIX}/+/{kind}"


def device_of(topic: str) -> str | None:
    """The <device_id> part of a roadmon/v1/<device_id>/... topic, or None."""
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        return None
    return parts[2]


class Parsed(NamedTuple):
    """What a topic says: kind is 'event', 'coverage', 'status', 'ack', 'cmd', 'result' or 'unknown'; command
    is the name of a cmd/<name> or cmd/<name>/result topic."""

    kind: str
    device_id: str | None
    command: str | None = None


def parse(topic: str) -> Parsed:
    """The inverse of the builders above; anything they cannot have built is kind 'unknown'."""
    device = device_of(topic)
    parts = topic.split("/")
    if not device:
        return Parsed("unknown", None)
    if len(parts) == 4 and parts[3] in ("event", "coverage", "status", "ack"):
        return Parsed(parts[3], device)
    if len(parts) == 5 and parts[3] == "cmd" and parts[4]:
        return Parsed("cmd", device, parts[4])
    if len(parts) == 6 and parts[3] == "cmd" and parts[4] and parts[5] == "result":
        return Parsed("result", device, parts[4])
    return Parsed("unknown", device)
