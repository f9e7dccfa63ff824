from __future__ import annotations

from pydantic import Field

from roadmon_contract.config_base import Section
from roadmon_contract.ids import DEVICE_ID_PATTERN


class DeviceConfig(Section):
    id: str = Field("veh-001", pattern=DEVICE_ID_PATTERN,
                    description="Device id: the MQTT login, client id and topic segment; unique in the fleet")
    state_dir: str = Field("/var/lib/edge-agent",
                           description="Folder for the outbox and the agent's state (systemd StateDirectory); "
                                       "a relative path is taken beside the config file")
