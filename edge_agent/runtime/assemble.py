"""The one place the agent is put together from its config: `edge-agent run`, `edge-agent replay`, the demo
(through `replay`) and the tests all build it here, so they run the same parts wired the same way.

Order matters: the outbox first (nothing detected may be lost), then the model, then the pipeline, and the
uplink last, with its command handlers registered before it connects (a command the broker kept for us
arrives right at connect).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from calibration import projector_from_config
from calibration.projector import GroundProjector
from edge_agent.config import AgentConfig
from edge_agent.detect.detector import load_detector
from edge_agent.detect.model_update import ModelUpdater, effective_model
from edge_agent.gnss.kalman import PositionFilter
from edge_agent.health import HealthBoard
from edge_agent.link.outbox import Outbox
from edge_agent.link.uplink import Uplink
from edge_agent.perception.events import ModelRef
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


def load_projector(cfg: AgentConfig) -> GroundProjector:
    """The calibration's projector (the pipeline scales it if the frames have another resolution)."""
    return projector_from_config(cfg.calibration)


def build_agent(cfg: AgentConfig, *, health: HealthBoard | None = None, outbox: Path | None = None,
                detector: FrameDetector | None = None, projector: GroundProjector | None = None,
                uplink: bool = False) -> Agent:
    """The agent's parts from CFG. OUTBOX overrides the config's outbox file; DETECTOR and PROJECTOR stand in
    for the configured model and calibration (a replay with recorded truth, a test); UPLINK connects to the
    broker and serves cmd/model-update. Raises ModelError, OSError or ValueError with a clear message when a
    part cannot start; whatever was opened before is closed again."""
    health = health or HealthBoard()
    box = Outbox(outbox or cfg.outbox_path, cfg.outbox, health)
    try:
        if detector is None:
            # A model installed by a remote update (models/current.onnx) supersedes "bundled".
            model = effective_model(cfg.detector, cfg.model_update, cfg.device.state_dir)
            detector = load_detector(cfg.detector.model_copy(update={"model": model}))
        health.update(detector="ok")
        position_filter = PositionFilter(cfg.gnss)
        pipeline = Pipeline(cfg, detector, position_filter, projector or load_projector(cfg), box, health)
        agent = Agent(cfg, health, box, position_filter, pipeline)
        if uplink:
            agent.uplink = Uplink(cfg.uplink, cfg.device.id, box, health)
            agent.updater = serve_model_updates(agent)
            agent.uplink.start()
    except BaseException:
        box.close()
        raise
    return agent


def serve_model_updates(agent: Agent) -> ModelUpdater:
    """cmd/model-update: a model that passed its checks is loaded in the uplink's worker thread and handed to
    the pipeline between two frames (the main loop never waits for a load)."""
    cfg, pipeline, health = agent.cfg, agent.pipeline, agent.health

    def activate(model: str) -> None:
        detector = load_detector(cfg.detector.model_copy(update={"model": model}))
        ref = ModelRef.of(detector.info)
        pipeline.detector = detector  # one reference assignment: the next frame uses the new model
        pipeline.model = ref
        pipeline.coverage.model_sha256 = ref.sha256
        health.update(detector="ok", model={"name": ref.name, "version": ref.version, "sha256": ref.sha256})
        log.info("now detecting with %s %s (%s)", ref.name, ref.version, ref.sha256[:12])

    updater = ModelUpdater.from_config(cfg, activate=activate, health=health)
    assert agent.uplink is not None
    updater.register(agent.uplink)
    return updater
