"""The base of every config model: unknown keys are errors, so a misspelt key names itself."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)
