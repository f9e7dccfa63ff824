"""Strict TOML configs for both programs: unknown keys are errors, so a misspelt key names itself, and every
problem is reported with its key path (`uplink.prot: Extra inputs are not permitted`)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds one 'key.path: message' per error."""

    def __init__(self, source: Path | str, problems: list[str]) -> None:
        self.source = str(source)
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def format_errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors()]


def validate(model: type[M], data: dict, source: Path | str = "<config>") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc)) from None


def load_toml(model: type[M], path: Path | str, allow_empty: bool = True) -> M:
    """Read and validate a TOML file as MODEL; raises ConfigError naming every bad key, or what is wrong with the
    file itself (missing, a folder, unreadable, not UTF-8, not TOML, or empty where ALLOW_EMPTY is false)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if not allow_empty and not text.strip():
            # A file written in place and cut short by a power cut reads as empty: all defaults, another
            # box's identity (veh-001), and `config check` said ok.
            raise ConfigError(path, ["is empty (a write cut short by a power cut?): reinstall it, e.g. with "
                                     "systemd/install.sh, or start from `edge-agent config example`"])
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(path, ["is a folder, not a config file"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text (byte {exc.start}): is it the config file?"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot be read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    return validate(model, data, path)
