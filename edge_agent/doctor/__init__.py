"""`edge-agent doctor`: one check per part of the box, each green, yellow or red with an explanation and a hint.

The checks run against the real things the agent uses (camera, serial port, model, outbox folder, broker) with
the same config, and never change the agent's state: they open, read, time and close. `run_checks` is the
entry point; the command in edge_agent/commands/doctor.py renders the results.
"""

from edge_agent.doctor.result import CheckResult, Level
from edge_agent.doctor.runner import CHECKS, run_checks

__all__ = ["CHECKS", "CheckResult", "Level", "run_checks"]
