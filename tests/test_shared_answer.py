"""Requests that ask while the same read runs share its answer (fleet_server.shared_answer): 20 dashboard tabs
opened together each read the 10,000-device list at once and the API answered 503."""

from __future__ import annotations

import threading
import time

import pytest

from fleet_server.shared_answer import SharedAnswer


def test_callers_during_a_read_share_it_and_later_ones_read_again() -> None:
    shared, reads, answers = SharedAnswer(), [], []
    started = threading.Event()

    def read() -> int:
        reads.append(1)
        started.set()
        time.sleep(1.5)  # long enough for the nine others to arrive while it runs, on a loaded machine too
        return len(reads)

    first = threading.Thread(target=lambda: answers.append(shared.get("fleet", read)))
    first.start()
    started.wait(5)
    others = [threading.Thread(target=lambda: answers.append(shared.get("fleet", read))) for _ in range(9)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(10)
    assert answers == [1] * 10 and len(reads) == 1
    assert shared.get("fleet", read) == 2  # none in flight: a fresh read, never a stale answer
    assert shared.get("other database", lambda: "own") == "own"


def test_a_failed_read_fails_everyone_who_waited_for_it_and_is_not_kept() -> None:
    shared, started, errors = SharedAnswer(), threading.Event(), []

    def broken() -> int:
        started.set()
        time.sleep(0.3)
        raise OSError("database away")

    def ask() -> None:
        try:
            shared.get("fleet", broken)
        except OSError as exc:
            errors.append(str(exc))

    first = threading.Thread(target=ask)
    first.start()
    started.wait(5)
    second = threading.Thread(target=ask)
    second.start()
    for t in (first, second):
        t.join(10)
    assert errors == ["database away"] * 2
    assert shared.get("fleet", lambda: 7) == 7
    with pytest.raises(ZeroDivisionError):
        shared.get("fleet", lambda: 1 / 0)
