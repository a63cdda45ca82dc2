"""Hands the jobs this server creates to the work queue, off the request path and many at a time.

`create.lua` writes a job's outbox entry together with its record, so a created job cannot be lost
on its way to the queue: what this relay fails to enqueue (Redis unreachable, the server killed), the
workers' reconciler enqueues after ENQUEUE_GRACE_S (worker/housekeeping.py). So `InitiateDownload`
answers once the job is written, and the enqueue, which used to be the larger half of its cost (a
second round trip, and bullmq's Python side per job), happens here: the jobs created while one batch
is on its way go together in the next, in one pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from jobs.model import Priority
from jobs.queue import JobQueue

log = logging.getLogger(__name__)

_MAX_BATCH = 500


class Enqueuer:
    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue
        self._waiting: dict[str, Priority] = {}  # job id -> priority, in the order submitted
        self._wake = asyncio.Event()
        self._sending = 0  # jobs in the batch on its way
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def submit(self, job_id: str, priority: Priority) -> None:
        self._waiting[job_id] = priority
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._waiting) + self._sending

    async def close(self, timeout_s: float = 5.0) -> None:
        """Sends what is waiting (for up to `timeout_s`; the reconciler has the rest), then stops."""
        deadline = time.monotonic() + timeout_s
        while self.backlog and time.monotonic() < deadline and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self.backlog:
            log.warning("%d created jobs left for the reconciler to enqueue", self.backlog)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff_s = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                batch = dict(list(self._waiting.items())[:_MAX_BATCH])
                for job_id in batch:
                    del self._waiting[job_id]
                self._sending = len(batch)
                try:
                    await self._queue.enqueue_many(list(batch.items()))
                    backoff_s = 0.05
                except Exception:  # noqa: BLE001 - retried; the reconciler is the backstop
                    log.warning("enqueueing %d jobs failed; retrying in %.2fs", len(batch), backoff_s, exc_info=True)
                    self._waiting, self._sending = batch | self._waiting, 0
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
                finally:
                    self._sending = 0
