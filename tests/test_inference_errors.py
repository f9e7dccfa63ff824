"""The agent's heartbeat carries its failed inferences, which the server exports as
road_inference_latency_seconds_count{status="error"} (tests/test_server_api.py)."""

from __future__ import annotations

from edge_agent.health import HealthBoard
from edge_agent.link.heartbeat import build_status
from roadmon_contract import validate


def test_heartbeat_counts_failed_inferences_since_start() -> None:
    health = HealthBoard()
    assert build_status("online", "veh-i", None, health)["inference_errors"] == 0
    health.count("detector_errors", 3)  # what Pipeline._detect counts when the detector raises
    status = build_status("online", "veh-i", None, health)
    assert status["inference_errors"] == 3
    assert validate.errors("status", status) == []
