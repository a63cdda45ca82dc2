"""When to restart a process of the run command that died, the way a container runtime's restart
policy does (on failure, with a pause that doubles with each recent crash), and when to give up."""

from __future__ import annotations

import time
from collections.abc import Callable


class RestartPolicy:
    def __init__(
        self,
        max_crashes: int = 5,
        window_s: float = 300.0,
        first_pause_s: float = 1.0,
        max_pause_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_crashes = max_crashes
        self.window_s = window_s
        self._first_pause_s = first_pause_s
        self._max_pause_s = max_pause_s
        self._clock = clock
        self._crashes: list[float] = []

    def crashed(self) -> float | None:
        """Counts a crash; returns how long to wait before restarting, or None when the process has
        crashed more than `max_crashes` times within `window_s` (it keeps crashing: give up)."""
        now = self._clock()
        self._crashes = [at for at in self._crashes if now - at < self.window_s] + [now]
        if len(self._crashes) > self.max_crashes:
            return None
        return min(self._first_pause_s * 2 ** (len(self._crashes) - 1), self._max_pause_s)
