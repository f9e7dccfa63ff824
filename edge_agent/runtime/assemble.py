"""The one place the agent is put together from its config: `edge-agent run`, `edge-agent replay`, the demo
(through `replay`) and the tests all build it here, so they run the same parts wired the same way.

Order matters: the outbox first (nothing detected may be lost), then the model, then the pipeline, and the
uplink last, with its command handlers registered before it connects (a command the broker kept for us
arrives right at connect).

A remotely installed model that does not load (damaged on disk, a runtime it does not suit) must not keep the
box from starting: under systemd it would restart forever and could never take a fixed model. The agent then
starts with previous.onnx or the configured model, logs it as critical, and reports it in its heartbeat
(`model.fallback`) and on cmd/model-update/result (`status: fallback`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from calibration import projector_from_config
from calibration.projector import GroundProjector
from edge_agent.config import AgentConfig
from edge_agent.detect.detector import load_detector
from edge_agent.detect.manifest import ModelError
from edge_agent.detect.model_update import ModelUpdater, start_candidates
from edge_agent.gnss.kalman import PositionFilter
from edge_agent.health import HealthBoard
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from edge_agent.link.writer_lock import WriterLock
from edge_agent.perception.events import ModelRef
from edge_agent.perception.mount_watch import mount_file_of
from edge_agent.runtime.config_reload import ConfigReload
from edge_agent.runtime.pipeline import FrameDetector, Pipeline

log = logging.getLogger(__name__)


@dataclass
class Agent:
    """Every part of one agent, built from one config. `close` stops the uplink and closes the outbox."""

    cfg: AgentConfig
    health: HealthBoard
    outbox: Outbox
    position_filter: PositionFilter
    pipeline: Pipeline
    uplink: Uplink | None = None
    updater: ModelUpdater | None = None
    model_fallback: str | None = None  # why the agent runs a fallback model, when it does
    writer_lock: WriterLock | None = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self.uplink is not None:
            try:
                self.uplink.stop()
            except Exception:
                log.exception("stopping the uplink failed")
        self.outbox.close()
        if self.writer_lock is not None:
            self.writer_lock.release()


def load_projector(cfg: AgentConfig) -> GroundProjector:
    """The calibration's projector (the pipeline scales it if the frames have another resolution)."""
    return projector_from_config(cfg.calibration)


def load_start_model(cfg: AgentConfig) -> tuple[FrameDetector, str | None]:
    """The detector to start with and, when the effective model (a remote update) did not load and another
    one runs instead, why. Raises the model's own error when there is nothing to fall back on."""
    candidates = start_candidates(cfg.detector, cfg.model_update, cfg.device.state_dir)
    failures: list[str] = []
    for what, model in candidates:
        try:
            detector = load_detector(cfg.detector.model_copy(update={"model": model}))
        except Exception as exc:
            if len(candidates) == 1:
                raise
            log.error("cannot start the %s model %s: %s", what, model, exc)
            failures.append(f"the {what} model {model} does not load: {exc}")
            continue
        if not failures:
            return detector, None
        reason = "; ".join(failures) + f"; running the {what} model ({detector.info.sha256[:12]}) instead"
        log.critical("MODEL FALLBACK: %s", reason)
        return detector, reason
    raise ModelError("no model can be started: " + "; ".join(failures))


def build_agent(cfg: AgentConfig, *, health: HealthBoard | None = None, outbox: Path | None = None,
                detector: FrameDetector | None = None, projector: GroundProjector | None = None,
                uplink: bool = False, config_reload: ConfigReload | None = None) -> Agent:
    """The agent's parts from CFG. OUTBOX overrides the config's outbox file; DETECTOR and PROJECTOR stand in
    for the configured model and calibration (a replay with recorded truth, a test); UPLINK connects to the
    broker and serves cmd/model-update (and cmd/config-reload with CONFIG_RELOAD). Raises ModelError, OSError
    or ValueError with a clear message when a part cannot start; whatever was opened before is closed again."""
    health = health or HealthBoard()
    path = Path(outbox or cfg.outbox_path)
    lock = WriterLock(path).acquire() if str(path) != ":memory:" else None
    box: Outbox | None = None
    try:
        box = Outbox(path, cfg.outbox, health)
        fallback = None
        if detector is None:
            # A model installed by a remote update (models/current.onnx) supersedes "bundled".
            detector, fallback = load_start_model(cfg)
        health.update(detector="ok")
        position_filter = PositionFilter(cfg.gnss)
        pipeline = Pipeline(cfg, detector, position_filter, projector or load_projector(cfg), box, health,
                            mount_file=mount_file_of(path) if lock is not None else None)
        if fallback:
            ref = pipeline.model
            health.update(model={"name": ref.name, "version": ref.version, "sha256": ref.sha256, "fallback": fallback})
        agent = Agent(cfg, health, box, position_filter, pipeline, model_fallback=fallback, writer_lock=lock)
        if uplink:
            agent.uplink = Uplink(cfg.uplink, cfg.device.id, box, health)
            agent.updater = serve_model_updates(agent)
            if config_reload is not None:
                config_reload.register(agent.uplink)
            agent.uplink.start()
    except BaseException:
        if box is not None:
            box.close()
        if lock is not None:
            lock.release()
        raise
    return agent


def serve_model_updates(agent: Agent) -> ModelUpdater:
    """cmd/model-update: a model that passed its checks is loaded in the uplink's worker thread and handed to
    the pipeline between two frames (the main loop never waits for a load). Reports a start-up fallback and
    answers (or resumes) what a crash interrupted."""
    cfg, pipeline, health = agent.cfg, agent.pipeline, agent.health

    def activate(model: str) -> None:
        detector = load_detector(cfg.detector.model_copy(update={"model": model}))
        ref = ModelRef.of(detector.info)
        pipeline.detector = detector  # one reference assignment: the next frame uses the new model
        pipeline.say_unknown_classes()
        pipeline.model = ref
        pipeline.coverage.model_sha256 = ref.sha256
        health.update(detector="ok", model={"name": ref.name, "version": ref.version, "sha256": ref.sha256})
        log.info("now detecting with %s %s (%s)", ref.name, ref.version, ref.sha256[:12])

    updater = ModelUpdater.from_config(cfg, activate=activate, health=health)
    assert agent.uplink is not None
    updater.register(agent.uplink)
    updater.running_sha = pipeline.model.sha256
    if agent.model_fallback:
        updater.report_fallback(agent.model_fallback, pipeline.model.sha256)
    updater.recover()
    return updater
