"""Progress of one run: what the pipeline has done, turned into percent, ETA and job events."""

from __future__ import annotations

import time
from typing import Any

from jobs.model import F, Phase
from jobs.store import JobStore

# Percent bands of the phases: looking files up is quick, packaging is the bulk of the work.
_FETCH_END = 5.0
_PACK_END = 95.0
# Coalesce progress writes: enough for a smooth bar, few enough for a thousand-file job.
_MIN_REPORT_INTERVAL_S = 0.2


class Progress:
    """Counts work and paced time, and writes events to the job through the store.

    Percent during packaging is the smaller of the work done and the paced time elapsed, so it
    only moves forward and never runs ahead of either.
    """

    def __init__(self, store: JobStore, job_id: str, token: str, paced_s: float) -> None:
        self._store = store
        self._job_id = job_id
        self._token = token
        self.paced_s = paced_s
        self.started = time.monotonic()
        self.files_total = 0
        self.files_done = 0
        self.bytes_total = 0
        self.bytes_done = 0
        self.phase = Phase.FETCHING
        self._last_report = 0.0

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def time_fraction(self) -> float:
        return 1.0 if self.paced_s <= 0 else min(self.elapsed_s / self.paced_s, 1.0)

    def work_fraction(self) -> float:
        if self.bytes_total:
            return self.bytes_done / self.bytes_total
        return self.files_done / self.files_total if self.files_total else 0.0

    def percent(self) -> float:
        if self.phase == Phase.FETCHING:
            return 0.0
        if self.phase == Phase.PACKAGING:
            return _FETCH_END + (_PACK_END - _FETCH_END) * min(self.work_fraction(), self.time_fraction())
        return _PACK_END

    def eta_ms(self) -> int:
        paced_left = max(self.paced_s - self.elapsed_s, 0.0)
        work = self.work_fraction()
        work_left = self.elapsed_s * (1 - work) / work if work > 0 else 0.0
        return int(max(paced_left, work_left) * 1000)

    async def report(self, message: str, force: bool = False, **extra: Any) -> None:
        """Writes the current progress as an event; throttled unless `force`."""
        now = time.monotonic()
        if not force and now - self._last_report < _MIN_REPORT_INTERVAL_S:
            return
        self._last_report = now
        fields = {
            F.PHASE: self.phase,
            F.PERCENT: f"{self.percent():.1f}",
            F.FILES_DONE: self.files_done,
            F.FILES_TOTAL: self.files_total,
            F.BYTES_DONE: self.bytes_done,
            F.BYTES_TOTAL: self.bytes_total,
            F.ETA_MS: self.eta_ms(),
            F.MESSAGE: message,
            **extra,
        }
        await self._store.report(self._job_id, self._token, fields)
