"""Where a process's latency tail comes from, as Prometheus metrics: how late the event loop runs
what is ready (a loop saturated or blocked), and how long the garbage collector stops the process.

A call's own work can be quick while it waits its turn on a busy loop: the server's handlers finish
in milliseconds while callers see tens of them at the 99th percentile (BENCHMARKS.md, "Tail latency").
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from prometheus_client import Histogram

_PAUSE_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

LOOP_LAG = Histogram(
    "event_loop_lag_seconds",
    "How much later than asked a timer on the event loop ran: the wait of everything ready to run.",
    buckets=_PAUSE_SECONDS,
)
GC_PAUSE = Histogram(
    "python_gc_pause_seconds", "How long one garbage collection stopped the process, by generation.", ["generation"],
    buckets=_PAUSE_SECONDS,
)
_LAG_INTERVAL_S = 0.1


async def measure_loop_lag() -> None:
    """Runs until cancelled, ten samples a second."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + _LAG_INTERVAL_S
        await asyncio.sleep(_LAG_INTERVAL_S)
        LOOP_LAG.observe(max(loop.time() - asked, 0.0))


class _GcTimer:
    def __init__(self) -> None:
        self._started = 0.0
        self._by_generation = [GC_PAUSE.labels(str(generation)) for generation in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)


def measure_gc_pauses() -> None:
    """Times every collection from now on (a few microseconds each)."""
    if not any(isinstance(callback, _GcTimer) for callback in gc.callbacks):
        gc.callbacks.append(_GcTimer())
