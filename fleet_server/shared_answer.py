"""One database read for every request that asks while it runs.

20 dashboard tabs opened together (a wall of screens at sign-in, a server restart) each built the 10,000-device
list at once; the API ran out of workers and answered 503. A request that arrives while the same read is in
flight now waits for that read's answer instead of starting its own: the answer is never older than the read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class SharedAnswer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Future] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            flight = self._flights.get(key)
            mine = flight is None
            if mine:
                flight = self._flights[key] = Future()
        assert flight is not None  # another request's flight, or the one made above
        if not mine:
            return flight.result()
        try:
            value = compute()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            with self._lock:
                del self._flights[key]
