"""A file kept in memory and read again when it changes: the API key file (server/apikeys.py), and
the tenants' webhook secrets in it, which workers read too (jobs/webhooks.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# How often a reader looks at the file's modification time: the bound on how long a change (a
# revoked key, a rotated secret) takes to apply.
RELOAD_EVERY_S = 2.0


class WatchedFile(Generic[T]):
    """`parse(text, source)` of a file, as `value`. A version that cannot be read (half written,
    malformed) is logged once and the last good one kept."""

    def __init__(self, path: str, parse: Callable[[str, str], T], empty: T, what: str) -> None:
        self._path = Path(path) if path else None
        self._parse = parse
        self._what = what
        self.value = empty
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._last_error = ""

    @property
    def configured(self) -> bool:
        return self._path is not None

    def load(self) -> bool:
        """Reads the file if it changed since the last read; whether it did. Raises OSError or
        ValueError when it cannot be read (at start-up, a process must not run without it)."""
        if self._path is None:
            return False
        stat = self._path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        self.value = self._parse(self._path.read_text(), str(self._path))
        self._stamp = stamp
        return True

    def refresh(self) -> bool:
        """load(), keeping the last good version when the file cannot be read; whether it changed."""
        try:
            changed = self.load()
        except (OSError, ValueError) as error:
            if str(error) != self._last_error:  # once per problem, not once per call
                log.error("%s: %s; keeping the previous version", self._what, error)
            self._last_error = str(error)
            return False
        self._last_error = ""
        return changed

    def refresh_due(self) -> bool:
        """refresh() if RELOAD_EVERY_S has passed since the last look (a stat costs a microsecond,
        but not on every call); whether it changed."""
        now = time.monotonic()
        if now - self._checked <= RELOAD_EVERY_S:
            return False
        self._checked = now
        return self.refresh()
