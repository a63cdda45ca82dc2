"""The work queue, on bullmq: the server enqueues job ids, workers take them.

bullmq only carries the job id; the job itself lives in the job store. bullmq provides the
at-least-once delivery: a job whose worker dies is moved back to waiting when its lock lapses
(lock_ms, checked every stalled_check_ms) and another worker takes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bullmq import Queue, Worker

from jobs.connections import bullmq_connection
from jobs.keys import Keys
from jobs.model import QUEUE_PRIORITY, Priority
from jobs.settings import Settings

JOB_NAME = "download"


class JobQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._options = {"connection": bullmq_connection(settings), "prefix": Keys(settings.redis_prefix).queue_prefix}
        self._queue: Queue | None = None

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = Queue(self.settings.queue_name, self._options)
        return self._queue

    async def enqueue(self, job_id: str, priority: Priority) -> None:
        # The queue entry's id is the job id: enqueueing the same job twice adds it once.
        await self.queue.add(
            JOB_NAME,
            {"job_id": job_id},
            {
                "jobId": job_id,
                "priority": QUEUE_PRIORITY[priority],
                "removeOnComplete": True,
                "removeOnFail": {"count": 1000},
            },
        )

    def worker(self, processor: Callable[[Any, str], Awaitable[Any]], name: str) -> Worker:
        s = self.settings
        return Worker(
            s.queue_name,
            processor,
            {
                **self._options,
                "name": name,
                "concurrency": s.worker_concurrency,
                "lockDuration": s.lock_ms,
                "stalledInterval": s.stalled_check_ms,
                # One more than our own limit: the runner, not bullmq, fails a job that keeps losing
                # its worker, so the job record says why instead of staying RUNNING.
                "maxStalledCount": s.max_attempts + 1,
            },
        )

    async def close(self) -> None:
        if self._queue is not None:
            await self._queue.close()
