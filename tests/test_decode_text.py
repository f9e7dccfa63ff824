"""Text PostgreSQL cannot store is refused by the decoder, naming where it is (not by the database, later)."""

from __future__ import annotations

import pytest

from roadmon_contract.decode import Invalid, decode_json


@pytest.mark.parametrize(("raw", "reason"), [
    (rb'{"detections": [{"class": "pot\u0000hole"}]}', "detections.0.class: NUL character"),
    (rb'{"a": [1, {"b": "x\ud800y"}]}', "a.1.b: lone surrogate (not Unicode)"),
    (rb'"\udc00"', "(root): lone surrogate (not Unicode)"),
    (b'{"a": "x\x00"}', "NUL character"),
])
def test_unstorable_text_is_refused_by_path(raw: bytes, reason: str) -> None:
    with pytest.raises(Invalid) as exc:
        decode_json(raw)
    assert str(exc.value) == reason


def test_escapes_that_are_fine_pass() -> None:
    assert decode_json(rb'{"a": "\ud83d\ude00", "b": "\\u0000 is text", "c": "\u00e9"}') == {
        "a": "\U0001f600", "b": "\\u0000 is text", "c": "\u00e9"}
