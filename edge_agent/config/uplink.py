"""MQTT uplink settings (owned by the uplink module)."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import Section


class UplinkConfig(Section):
    enabled: bool = Field(True, description="Drain the outbox to the broker; false keeps everything on disk")
    host: str = Field("localhost", description="Broker host name")
    port: int = Field(8883, gt=0, lt=65536, description="Broker port (8883 = MQTT over TLS)")
