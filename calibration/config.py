"""From the agent's [calibration] section to a GroundProjector, and the intrinsics file format."""

from __future__ import annotations

import json
import logging
import math
import tomllib
from pathlib import Path
from typing import Protocol

from calibration.camera import Intrinsics, Mount
from calibration.projector import GroundProjector

log = logging.getLogger(__name__)


class CalibrationConfig(Protocol):
    """The settings read here: the agent's [calibration] section (edge_agent.config.calibration) has them. A
    Protocol, so that this package, which the agent and the tools share, does not import the agent."""

    intrinsics_file: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float | None
    cy: float | None
    dist: list[float]
    hfov_deg: float
    height_m: float
    pitch_deg: float
    roll_deg: float
    yaw_deg: float
    lateral_m: float


class CalibrationError(ValueError):
    """A calibration that cannot be used (missing or malformed intrinsics file, nonsense values)."""


def intrinsics_to_dict(intr: Intrinsics, rms_px: float | None = None, images: int | None = None,
                       problems: list[str] | None = None) -> dict:
    out: dict = {"width": intr.width, "height": intr.height, "fx": intr.fx, "fy": intr.fy, "cx": intr.cx,
                 "cy": intr.cy, "dist": list(intr.dist)}
    if rms_px is not None:
        out["rms_reprojection_px"] = rms_px
    if images is not None:
        out["images"] = images
    if problems:
        out["problems"] = problems  # doctor repeats them for as long as the file is in use
    return out


def _toml_value(v: object) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return json.dumps(v)


def intrinsics_text(path: Path, intr: Intrinsics, rms_px: float | None = None, images: int | None = None,
                    problems: list[str] | None = None) -> str:
    """The file's text: TOML (a [calibration]-compatible table of keys) or JSON, by PATH's suffix."""
    data = intrinsics_to_dict(intr, rms_px, images, problems)
    if path.suffix.lower() == ".json":
        return json.dumps(data, indent=2) + "\n"
    lines = ["# camera intrinsics written by `edge-agent calibrate intrinsics`"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items()]
    return "\n".join(lines) + "\n"


def read_intrinsics(path: Path | str) -> Intrinsics:
    """Read a file written from `intrinsics_text` (TOML or JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise CalibrationError(f"{path}: empty (a write cut short by a power cut?): run `edge-agent calibrate "
                                   "intrinsics` again, or copy the file back from the installation's records")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise CalibrationError(f"{path}: intrinsics file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CalibrationError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'TOML'}: {exc}") from None
    missing = [k for k in ("width", "height", "fx", "fy", "cx", "cy") if k not in data]
    if missing:
        raise CalibrationError(f"{path}: missing {', '.join(missing)}")
    try:
        intr = Intrinsics(float(data["fx"]), float(data["fy"]), float(data["cx"]), float(data["cy"]),
                          int(data["width"]), int(data["height"]), tuple(float(c) for c in data.get("dist", [])))
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{path}: bad value: {exc}") from None
    if intr.fx <= 0 or intr.fy <= 0 or intr.width <= 0 or intr.height <= 0:
        raise CalibrationError(f"{path}: focal lengths and image size must be positive")
    return intr


def intrinsics_file_problems(path: Path | str) -> list[str]:
    """What `calibrate intrinsics` found wrong with the fit it wrote to PATH (its `problems`, and its RMS where a
    file predates them); empty for a sound fit or a file written by hand."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError):
        return []  # read_intrinsics says what is wrong with the file itself
    problems = [str(p) for p in data.get("problems", []) if isinstance(p, str)]
    rms = data.get("rms_reprojection_px")
    if not problems and isinstance(rms, int | float) and rms > 1.0:
        problems.append(f"RMS reprojection error {rms:.2f} px (above 1 px)")
    return problems


def intrinsics_from_config(cfg: CalibrationConfig) -> Intrinsics:
    if cfg.intrinsics_file:
        return read_intrinsics(cfg.intrinsics_file)
    fx = cfg.fx or (cfg.width / 2) / math.tan(math.radians(cfg.hfov_deg) / 2)
    fy = cfg.fy or fx
    cx = cfg.width / 2 if cfg.cx is None else cfg.cx
    cy = cfg.height / 2 if cfg.cy is None else cfg.cy
    return Intrinsics(fx, fy, cx, cy, cfg.width, cfg.height, tuple(cfg.dist))


def mount_from_config(cfg: CalibrationConfig) -> Mount:
    return Mount(cfg.height_m, cfg.pitch_deg, cfg.roll_deg, cfg.yaw_deg, cfg.lateral_m)


def projector_from_config(cfg: CalibrationConfig, frame_size: tuple[int, int] | None = None) -> GroundProjector:
    """The projector for the configured camera; `frame_size` (width, height) rescales the intrinsics when the
    camera delivers another resolution than the one it was calibrated at (same aspect ratio assumed)."""
    intr = intrinsics_from_config(cfg)
    if frame_size is not None and tuple(frame_size) != (intr.width, intr.height):
        mismatch = intr.aspect_mismatch(*frame_size)
        if mismatch:
            log.warning("%s (set camera.width/height to the calibrated shape, or calibrate at this one)", mismatch)
        intr = intr.scaled(*frame_size)
    return GroundProjector(intr, mount_from_config(cfg))
