"""Where a model file is, what its sidecar manifest says, and what its ONNX metadata says.

The manifest (`<stem>.manifest.json` beside the model) is the model card in machine-readable form: name,
version, classes, input size, sha256 of the .onnx, training data and licence, measured metrics and latency,
quantization format. When it is present its sha256 must match the file, so a swapped or truncated model is
caught at load rather than producing silent nonsense.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]  # edge_agent/detect/manifest.py -> the checkout
BUNDLED_NAME = "model.onnx"
# Where "bundled" is looked for: the repository checkout first, then where an installer puts a copy
# (`<prefix>/share/road-monitor/bundled/`; a Pi image can also just set detector.model to a path).
BUNDLED_DIRS = (REPO_ROOT / "models" / "bundled", Path(sys.prefix) / "share" / "road-monitor" / "bundled")


class ModelError(RuntimeError):
    """A model that cannot be used here; the message says which file and why."""


def bundled_model_path() -> Path:
    for folder in BUNDLED_DIRS:
        if (folder / BUNDLED_NAME).is_file():
            return folder / BUNDLED_NAME
    searched = ", ".join(str(d / BUNDLED_NAME) for d in BUNDLED_DIRS)
    raise ModelError(f"the bundled model is not installed (looked in {searched}); set detector.model to a path")


def resolve_model_path(model: str) -> Path:
    path = bundled_model_path() if model == "bundled" else Path(model).expanduser()
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    return path


def manifest_path_for(model_path: Path, explicit: str | None = None) -> Path | None:
    """The explicit manifest, or `<stem>.manifest.json` beside the model (or beside its symlink target)."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ModelError(f"manifest not found: {path}")
        return path
    for candidate in (model_path, model_path.resolve()):
        sidecar = candidate.with_name(f"{candidate.stem}.manifest.json")
        if sidecar.is_file():
            return sidecar
    return None


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"manifest {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"manifest {path} must hold a JSON object")
    return data


def check_manifest_sha(manifest: dict[str, Any], manifest_file: Path, actual: str) -> None:
    expected = str(manifest.get("sha256", "")).lower()
    if expected and expected != actual:
        raise ModelError(f"sha256 mismatch: {manifest_file} expects {expected[:16]}..., the model file is "
                         f"{actual[:16]}... (a different or damaged file)")


def parse_names(value: Any) -> list[str] | None:
    """Class names from metadata or a manifest: a list, a {id: name} dict, or their text forms
    (Ultralytics writes a Python dict repr such as "{0: 'pothole', 1: 'crack'}")."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return None
    if isinstance(value, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in value.items())
        except (TypeError, ValueError):
            return None
        if [k for k, _ in items] != list(range(len(items))):
            return None
        return [v for _, v in items]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return None


MIN_INPUT, MAX_INPUT = 32, 4096  # as detector.input_size allows


def parse_size(value: Any) -> tuple[int, int] | None:
    """(width, height) from a manifest's `input_size`: [width, height] or one int for a square."""
    hw = parse_imgsz(value)
    return (hw[1], hw[0]) if hw else None


def parse_imgsz(value: Any) -> tuple[int, int] | None:
    """(width, height) from metadata `imgsz` ("[640, 640]" or "640"); Ultralytics stores [height, width]."""
    if value is None:
        return None
    try:
        v = ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError):
        return None
    if isinstance(v, int):
        v = [v, v]
    if not (isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int) for x in v)):
        return None
    if not all(MIN_INPUT <= x <= MAX_INPUT for x in v):  # a canvas of 0 or 10^5 px is a broken export
        raise ValueError(f"input size {value!r} in the model's metadata is outside {MIN_INPUT}-{MAX_INPUT} px")
    return int(v[1]), int(v[0])
