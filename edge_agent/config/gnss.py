"""GNSS reader and Kalman filter settings (owned by the GNSS modules)."""

from __future__ import annotations

from pydantic import Field

from edge_agent.config.base import Section


class GnssConfig(Section):
    source: str = Field("serial", description="Where NMEA comes from: serial, file, stdin or gpsd")
    port: str = Field("/dev/ttyACM0", description="Serial device of the receiver (source=serial)")
    baud: int = Field(9600, gt=0, description="Serial baud rate (source=serial)")
