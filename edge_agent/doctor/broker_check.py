"""Broker reachable, TLS, login: placeholder until the step-by-step probe lands."""

from __future__ import annotations

from edge_agent.doctor.result import CheckResult, Context, Level


def check_broker(ctx: Context) -> CheckResult:
    return CheckResult("broker", Level.SKIPPED, "not implemented yet")
