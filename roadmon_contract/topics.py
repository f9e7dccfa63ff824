"""MQTT topic names (contract v1)."""

from __future__ import annotations

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


def shared(kind: str, group: str = "ingest") -> str:
    """Shared-subscription filter so several ingest workers split one kind of message."""
    return f"$share/{group}/{PREFIX}/+/{kind}"


def device_of(topic: str) -> str | None:
    """The <device_id> part of a roadmon/v1/<device_id>/... topic, or None."""
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        return None
    return parts[2]
