"""JSON Schema validation of wire messages, with one readable line per problem."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

KINDS = ("event", "coverage", "status", "ack")


@cache
def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a message kind, read once from the package (both halves use this copy)."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    return json.loads(resources.files("roadmon_contract.schemas").joinpath(f"{kind}.schema.json").read_text())


@cache
def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(schema(kind), format_checker=FormatChecker())


def errors(kind: str, message: Any) -> list[str]:
    """Every schema violation of MESSAGE as 'path: problem'; empty when it is valid."""
    out = []
    for err in sorted(validator(kind).iter_errors(message), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in err.absolute_path) or "(root)"
        out.append(f"{path}: {err.message}")
    return out
