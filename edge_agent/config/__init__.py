"""The agent's configuration: one TOML file, validated at start.

Each section lives in its own module beside this one; `AgentConfig` puts them together. Unknown keys are
errors, and `load` reports every problem with its key path (`uplink.prot: Extra inputs are not permitted`).
`load` also takes every relative file path in the file as relative to the file's own folder (`paths`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import Field

from edge_agent.config.calibration import CalibrationConfig
from edge_agent.config.camera import CameraConfig
from edge_agent.config.detector import DetectorConfig
from edge_agent.config.device import DeviceConfig
from edge_agent.config.events import EventsConfig
from edge_agent.config.gnss import GnssConfig
from edge_agent.config.model_update import ModelUpdateConfig
from edge_agent.config.outbox import OutboxConfig
from edge_agent.config.paths import resolve_paths
from edge_agent.config.tracker import TrackerConfig
from edge_agent.config.uplink import UplinkConfig
from roadmon_contract.config_base import ConfigError, Section, load_toml, validate

EXAMPLE = Path(__file__).with_name("example.toml")
__all__ = ["EXAMPLE", "AgentConfig", "ConfigError", "file_sha256", "load", "parse"]


class AgentConfig(Section):
    device: DeviceConfig = Field(default_factory=DeviceConfig, description="Who this box is and where it keeps state")
    camera: CameraConfig = Field(default_factory=CameraConfig, description="Where frames come from")
    gnss: GnssConfig = Field(default_factory=GnssConfig, description="GNSS receiver and position filter")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig,
                                           description="Camera intrinsics and how it is mounted")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="The ONNX detector")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="Tracks, events and coverage")
    events: EventsConfig = Field(default_factory=EventsConfig, description="Event contents, severity, coverage")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="The on-disk store-and-forward queue")
    uplink: UplinkConfig = Field(default_factory=UplinkConfig, description="MQTT connection to the fleet")
    model_update: ModelUpdateConfig = Field(default_factory=ModelUpdateConfig,
                                            description="Remote model updates: download, verify, swap")

    @property
    def outbox_path(self) -> Path:
        """The outbox file: outbox.file, inside device.state_dir unless it is absolute."""
        path = Path(self.outbox.file)
        return path if path.is_absolute() else Path(self.device.state_dir) / path


def parse(data: dict, source: Path | str = "<config>") -> AgentConfig:
    return validate(AgentConfig, data, source)


def load(path: Path | str) -> AgentConfig:
    """Read and validate a TOML config; raises ConfigError naming every bad key. Relative file paths in it
    come back absolute, taken beside PATH (edge_agent/config/paths.py)."""
    return resolve_paths(load_toml(AgentConfig, path, allow_empty=False), Path(path))


def file_sha256(path: Path | str) -> str | None:
    """The config file's digest: the running agent keeps its start's in its status, so doctor can tell that the
    file was edited since (it judged the file while the agent ran the old one); None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
