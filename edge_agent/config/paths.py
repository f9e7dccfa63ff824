"""Relative file paths in the agent's config are taken beside the config file, never from the current folder.

A technician's `edge-agent config check` runs in their shell, systemd starts `edge-agent run` in `/`: a path
read against the working directory named one file for the one and another (or none) for the other. `load`
therefore rewrites every relative path field against the config file's folder, once, so config check,
doctor, run, replay and status all see the same files. Values that are not file paths stay as they are: the
model "bundled", a V4L2 index, a URL or GStreamer pipeline as camera, PEM text as public key, unset fields.

Broker credentials keep one more rule (systemd's LoadCredential=): a relative name found in
$CREDENTIALS_DIRECTORY stays relative, so the uplink reads it from there (link/mqtt_tls.credential_path).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.config.camera import source_kind
from roadmon_contract.config_base import ConfigError

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

CREDENTIAL_FIELDS = ("ca_file", "cert_file", "key_file", "password_file")


def beside(base: Path, value: str | None) -> str | None:
    """VALUE taken relative to BASE when it is a relative path; empty and unset values stay as they are."""
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _credential(base: Path, value: str | None) -> str | None:
    """A credential file: left relative when $CREDENTIALS_DIRECTORY holds it (systemd's copy wins), else
    beside the config like any other path."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if value and not Path(value).is_absolute() and creds and (Path(creds) / value).exists():
        return value
    return beside(base, value)


def _is_pem(value: str | None) -> bool:
    return bool(value) and "-----BEGIN" in str(value)


def _refuse_a_queue_left_behind(cfg: AgentConfig, config_file: Path, base: Path) -> None:
    """Agents before this rule took a relative state_dir from the working directory. After an upgrade the same
    config names another folder, where the agent would start an empty queue and leave the old one's unsent
    events behind, unseen by status and doctor: refuse, naming both, until the config says which."""
    state = Path(cfg.device.state_dir).expanduser()
    if state.is_absolute() or Path(cfg.outbox.file).is_absolute():
        return
    old, new = (Path.cwd() / state).resolve(), (base / state).resolve()
    if old != new and (old / cfg.outbox.file).exists() and not (new / cfg.outbox.file).exists():
        raise ConfigError(config_file, [
            f"device.state_dir {cfg.device.state_dir!r}: relative paths are taken beside the config now ({new}), but "
            f"the queue an earlier agent kept is at {old / cfg.outbox.file}, taken from the working directory: "
            f"set state_dir = \"{old}\" (or move that folder to {new})"])


def resolve_paths(cfg: AgentConfig, config_file: Path) -> AgentConfig:
    """CFG with its relative file paths made absolute against CONFIG_FILE's folder (changed in place and
    returned). Paths inside device.state_dir (outbox.file, uplink.status_file) follow state_dir itself."""
    base = config_file.expanduser().resolve().parent
    _refuse_a_queue_left_behind(cfg, config_file, base)
    cfg.device.state_dir = beside(base, cfg.device.state_dir) or cfg.device.state_dir
    if source_kind(cfg.camera.source) == "file":
        cfg.camera.source = beside(base, cfg.camera.source) or cfg.camera.source
    cfg.gnss.file = beside(base, cfg.gnss.file) or ""
    if "://" not in cfg.gnss.port:  # pyserial URLs (socket://, rfc2217://) are not files
        cfg.gnss.port = beside(base, cfg.gnss.port) or cfg.gnss.port
    cfg.calibration.intrinsics_file = beside(base, cfg.calibration.intrinsics_file) or ""
    if cfg.detector.model != "bundled":
        cfg.detector.model = beside(base, cfg.detector.model) or cfg.detector.model
    cfg.detector.manifest = beside(base, cfg.detector.manifest)
    update = cfg.model_update
    update.models_dir = beside(base, update.models_dir) or ""
    update.ca_file = beside(base, update.ca_file)
    if not _is_pem(update.public_key):
        update.public_key = beside(base, update.public_key)
    for name in CREDENTIAL_FIELDS:
        setattr(cfg.uplink, name, _credential(base, getattr(cfg.uplink, name)))
    return cfg


def missing_files(cfg: AgentConfig) -> list[str]:
    """'key: path' for each file the config names that is not there (on this machine): `config check` says so,
    since a relative name now means beside the config, which an earlier agent read from the working folder."""
    wanted = [("calibration.intrinsics_file", cfg.calibration.intrinsics_file),
              ("detector.manifest", cfg.detector.manifest)]
    if source_kind(cfg.camera.source) == "file":
        wanted.append(("camera.source", cfg.camera.source))
    if cfg.gnss.source == "file":
        wanted.append(("gnss.file", cfg.gnss.file))
    if cfg.detector.model != "bundled":
        wanted.append(("detector.model", cfg.detector.model))
    # A missing signing key or CA left `config check` saying ok, and every model update failing. (The uplink's
    # credential files are left out: systemd hands them over in $CREDENTIALS_DIRECTORY only when it runs.)
    wanted.append(("model_update.ca_file", cfg.model_update.ca_file))
    if not _is_pem(cfg.model_update.public_key):
        wanted.append(("model_update.public_key", cfg.model_update.public_key))
    return [f"{key}: {value}" for key, value in wanted if value and not Path(value).exists()]
