"""Runs the checks in order; a check that crashes is a red result, never a crashed doctor."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from edge_agent.doctor.broker_check import check_broker
from edge_agent.doctor.calibration_check import check_calibration
from edge_agent.doctor.camera_check import check_camera
from edge_agent.doctor.clock_check import check_clock
from edge_agent.doctor.config_check import check_config
from edge_agent.doctor.delivery_check import check_agent, check_delivery
from edge_agent.doctor.gnss_check import check_gnss
from edge_agent.doctor.model_check import check_model
from edge_agent.doctor.outbox_check import check_outbox
from edge_agent.doctor.result import CheckResult, Context, Level, Options

log = logging.getLogger(__name__)

Check = Callable[[Context], CheckResult]

# Order matters: GNSS leaves its UTC (or why there is none) for the clock check, the camera its frame size for
# the calibration's shape check (the model is timed at the configured frame size, with or without the camera).
# Agent and delivery come last: they say whether the parts above, fine one by one, get events confirmed.
CHECKS: dict[str, Check] = {
    "config": check_config,
    "camera": check_camera,
    "calibration": check_calibration,
    "gnss": check_gnss,
    "clock": check_clock,
    "model": check_model,
    "outbox": check_outbox,
    "broker": check_broker,
    "agent": check_agent,
    "delivery": check_delivery,
}
NEEDS_CONFIG = set(CHECKS) - {"config", "clock"}


def _run_one(name: str, check: Check, ctx: Context) -> CheckResult:
    t0 = time.monotonic()
    try:
        result = check(ctx)
    except Exception as exc:
        log.debug("doctor check %s crashed", name, exc_info=True)
        result = CheckResult(name, Level.RED, f"the check itself failed: {type(exc).__name__}: {exc}",
                             "an unexpected error; the part is probably not usable as configured",
                             "run with -v for the traceback")
    result.duration_s = time.monotonic() - t0
    return result


def run_checks(config_path: str, only: Iterable[str] | None = None, options: Options | None = None,
               progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Run the named checks (all by default) against CONFIG_PATH; config is always checked first."""
    wanted = set(only or CHECKS) | {"config"}
    unknown = wanted - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s): {', '.join(sorted(unknown))}; known: {', '.join(CHECKS)}")
    ctx = Context(config_path=config_path, options=options or Options())
    results = []
    for name, check in CHECKS.items():
        if name not in wanted:
            continue
        if progress:
            progress(name)
        if name in NEEDS_CONFIG and ctx.cfg is None:
            results.append(CheckResult(name, Level.SKIPPED, "not checked: the config did not load"))
            continue
        results.append(_run_one(name, check, ctx))
    return results
