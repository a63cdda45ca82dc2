"""A watch's inbox: the items the hub hands one WatchProgress stream, read with a timeout.

An idle stream spends its whole life waiting here, so the inbox is built to cost little: a list, and
while the stream waits, one future and one timer. `asyncio.Queue` read through `asyncio.wait_for`
cost an idle stream about 4 kB more (BENCHMARKS.md, "Idle streams"): the queue holds three deques
(each over 600 bytes empty), and every wait starts a Task, with its own copy of the context.
"""

from __future__ import annotations

import asyncio
from typing import Any

TIMEOUT = object()  # what get() returns when nothing came in time


class Inbox:
    __slots__ = ("_items", "_limit", "_waiter")

    def __init__(self, limit: int) -> None:
        self._items: list[Any] = []
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None

    def full(self) -> bool:
        return len(self._items) >= self._limit

    def clear(self) -> None:
        self._items.clear()

    def put(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout_s: float) -> Any:
        """The oldest item, or TIMEOUT when none comes within `timeout_s`."""
        if not self._items:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout_s, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._items:
                return TIMEOUT
        return self._items.pop(0)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
