"""The one bounded JSON decoder for everything that arrives over the network: what a device or client sends the
server (MQTT payloads, HTTP bodies) and what the server sends a box (acks, commands).

`json.loads` alone is not safe on hostile input: JSON nested 10,000 deep raises RecursionError and a
5,000-digit integer raises ValueError, neither of which is a JSONDecodeError, and a NUL character passes
JSON but PostgreSQL's jsonb refuses it later. This decoder checks the size before parsing, the nesting depth
and number lengths while parsing, refuses NUL and invalid UTF-8, and turns every failure into `Invalid` with
a short reason, so one bad message never becomes an exception in the caller.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np


class Invalid(ValueError):
    """The message cannot be stored; the text says why."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 2_500_000   # whole message
    max_depth: int = 32          # nested objects/arrays (an event is 3 deep)
    max_number_chars: int = 40   # digits of one number (a float's repr is at most 24)


DEFAULT_LIMITS = Limits()
# A JSON string (with its escapes), and anything but a bracket.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _no_constants(name: str) -> Any:
    raise Invalid(f"not finite: {name}")


def _number(limit: int, convert: type) -> Any:
    def parse(text: str) -> Any:
        if len(text) > limit:
            raise Invalid(f"number too long: {len(text)} characters > {limit}")
        value = convert(text)
        if convert is float and not math.isfinite(value):  # 1e999 is valid JSON and overflows to infinity
            raise Invalid("not finite: a number overflows")
        return value

    return parse


def deeper_than(text: str, limit: int) -> bool:
    """Whether TEXT nests objects/arrays more than LIMIT deep, judged before parsing (so a hostile depth costs
    no recursion) in a few linear passes in C: strings and everything but brackets removed by regex, then the
    running depth as a cumulative sum."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case, decided by two counts in C
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text) if '"' in text else text)
    if len(brackets) <= limit:
        return False
    codes = np.frombuffer(brackets.encode("ascii"), np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max()) > limit


def decode_json(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """RAW parsed as JSON within LIMITS; raises Invalid (never anything else) with the reason."""
    if len(raw) > limits.max_bytes:
        raise Invalid(f"too large: {len(raw)} bytes > {limits.max_bytes}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Invalid(f"not UTF-8: byte {exc.start}") from None
    if "\x00" in text:
        raise Invalid("NUL character")
    if deeper_than(text, limits.max_depth):
        raise Invalid(f"nested too deep: > {limits.max_depth} levels")
    value = _parse(text, limits)
    # Escapes that are valid JSON but no text PostgreSQL stores: NUL (jsonb refuses it) and a lone surrogate
    # half (not Unicode: encoding it fails). Named by where they are, like every other refusal.
    if "\\u" in text and ("\\u0000" in text or _SURROGATE_ESCAPE.search(text)):
        where = _bad_text_path(value)
        if where is not None:
            raise Invalid(f"{where[0] or '(root)'}: {where[1]}")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def text_fault(text: str) -> str | None:
    if "\x00" in text:
        return "NUL character"
    return "lone surrogate (not Unicode)" if _SURROGATES.search(text) else None


def _bad_text_path(value: Any, path: str = "") -> tuple[str, str] | None:
    """(dotted path, fault) of the first string or key that PostgreSQL cannot store, or None."""
    if isinstance(value, str):
        fault = text_fault(value)
        return (path, fault) if fault else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        here = f"{path}.{key}" if path else str(key)
        fault = text_fault(key) if isinstance(key, str) else None
        found = (here, fault) if fault else _bad_text_path(item, here)
        if found is not None:
            return found
    return None


def _parse(text: str, limits: Limits) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constants, parse_int=_number(limits.max_number_chars, int),
                           parse_float=_number(limits.max_number_chars, float))
    except Invalid:
        raise
    except json.JSONDecodeError as exc:
        raise Invalid(f"not JSON: {exc}") from None
    except RecursionError:  # unbalanced and deep: the C scanner gives up near 1000 levels, cleanly
        raise Invalid(f"nested too deep: > {limits.max_depth} levels") from None
    except (ValueError, MemoryError) as exc:  # what else json.loads may raise
        raise Invalid(f"not JSON: {type(exc).__name__}") from None
