"""Which keys of a config model its example file leaves out (set or commented out, in its own section)."""

from __future__ import annotations

import re

from pydantic import BaseModel


def sections(text: str) -> dict[str, str]:
    """The text under each `[section]` header of TEXT (a commented-out header counts)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"^\s*#?\s*\[([\w.]+)\]\s*(#.*)?$", line)
        if header:
            current = out.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in out.items()}


def undocumented(model: type[BaseModel], text: str) -> list[str]:
    """`section.key` for every key of MODEL's sections that TEXT neither sets nor shows commented out."""
    found = sections(text)
    missing = []
    for name, field in model.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            body = found.get(name, "")
            missing += [f"{name}.{key}" for key in section.model_fields
                        if not re.search(rf"^\s*#?\s*{key}\s*=", body, re.M)]
    return missing
