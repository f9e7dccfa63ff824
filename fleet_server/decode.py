"""The one bounded JSON decoder for everything a device or client sends (MQTT payloads, HTTP bodies).

`json.loads` alone is not safe on hostile input: JSON nested 10,000 deep raises RecursionError and a
5,000-digit integer raises ValueError, neither of which is a JSONDecodeError, and a NUL character passes
JSON but PostgreSQL's jsonb refuses it later. This decoder checks the size before parsing, the nesting depth
and number lengths while parsing, refuses NUL and invalid UTF-8, and turns every failure into `Invalid` with
a short reason, so one bad message never becomes an exception in the caller.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any


class Invalid(ValueError):
    """The message cannot be stored; the text says why."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 2_500_000   # whole message
    max_depth: int = 32          # nested objects/arrays (an event is 3 deep)
    max_number_chars: int = 40   # digits of one number (a float's repr is at most 24)


DEFAULT_LIMITS = Limits()
# A JSON string (with its escapes) or any character that opens or closes a container.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _no_constants(name: str) -> Any:
    raise Invalid(f"not finite: {name}")


def _number(limit: int, convert: type) -> Any:
    def parse(text: str) -> Any:
        if len(text) > limit:
            raise Invalid(f"number too long: {len(text)} characters > {limit}")
        return convert(text)

    return parse


def depth_of(text: str) -> int:
    """Deepest nesting of objects and arrays in TEXT (strings are skipped, so brackets in them do not count)."""
    steps = (_DEPTH_STEP[b] for b in _BRACKETS.findall(_STRING.sub("", text)))
    return max(accumulate(steps, initial=0))


def decode_json(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """RAW parsed as JSON within LIMITS; raises Invalid (never anything else) with the reason."""
    if len(raw) > limits.max_bytes:
        raise Invalid(f"too large: {len(raw)} bytes > {limits.max_bytes}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Invalid(f"not UTF-8: byte {exc.start}") from None
    if "\x00" in text or "\\u0000" in text:
        raise Invalid("NUL character")
    depth = depth_of(text)
    if depth > limits.max_depth:
        raise Invalid(f"nested too deep: {depth} levels > {limits.max_depth}")
    try:
        return json.loads(text, parse_constant=_no_constants, parse_int=_number(limits.max_number_chars, int),
                          parse_float=_number(limits.max_number_chars, float))
    except Invalid:
        raise
    except json.JSONDecodeError as exc:
        raise Invalid(f"not JSON: {exc}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # what json.loads may raise besides the above
        raise Invalid(f"not JSON: {type(exc).__name__}") from None
