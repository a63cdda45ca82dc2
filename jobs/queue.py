"""The work queue, on bullmq: the workers' relays enqueue job ids (worker/relay.py), workers take them.

bullmq only carries the job id; the job itself lives in the job store. bullmq provides the
at-least-once delivery: a job whose worker dies is moved back to waiting when its lock lapses
(lock_ms, checked every stalled_check_ms) and another worker takes it.

Each run of a job (its first, and one per RetryDownload) has an entry of its own, so that a retry
never meets the entry of the run before it, which bullmq may still hold for a moment after that run
ended (and then deletes), or which still waits when a queued job was cancelled (a worker skips it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bullmq import Queue, Worker
from bullmq.lock_manager import LockManager
from redis.asyncio import ConnectionPool

from jobs.connections import bullmq_connection
from jobs.keys import Keys
from jobs.model import QUEUE_PRIORITY, Priority
from jobs.settings import Settings

log = logging.getLogger(__name__)

JOB_NAME = "download"

# 1 + 2 + … + 256 s: about 8.5 minutes of redelivery before bullmq fails the entry (the reconciler
# puts a job whose entry failed back in the queue, housekeeping.py).
_DELIVERY_ATTEMPTS = 10


def entry_id(job_id: str, retries: int) -> str:
    """The bullmq id of the entry of a job's run after `retries` retries: enqueueing the same run
    twice adds it once."""
    return f"{job_id}.{retries}" if retries else job_id


@dataclass(frozen=True)
class QueueEntry:
    job_id: str
    priority: Priority
    retries: int = 0  # the run's: how many retries came before it

    @property
    def id(self) -> str:
        return entry_id(self.job_id, self.retries)

    @property
    def data(self) -> dict[str, Any]:
        return {"job_id": self.job_id} | ({"retries": self.retries} if self.retries else {})


class JobQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection = bullmq_connection(settings)
        self._options = {"connection": self._connection, "prefix": Keys(settings.redis_prefix).queue_prefix}
        self._queue: Queue | None = None

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            self._queue = Queue(self.settings.queue_name, self._options)
        return self._queue

    async def enqueue(self, entry: QueueEntry) -> None:
        await self.queue.add(JOB_NAME, entry.data, _options(entry))

    async def enqueue_many(self, entries: list[QueueEntry]) -> None:
        """One round trip (a MULTI pipeline of bullmq's add script) for all of them."""
        await self.queue.addBulk([{"name": JOB_NAME, "data": entry.data, "opts": _options(entry)} for entry in entries])

    async def counts(self) -> dict[str, int]:
        """Entries by bullmq state. Every entry has a priority, so the waiting ones are in the sorted
        set `…:prioritized`, not in the list `…:wait`; delayed ones wait out a redelivery back-off."""
        return await self.queue.getJobCounts("waiting", "prioritized", "delayed", "active")

    async def remove(self, entry: QueueEntry) -> None:
        """Removes a finished (failed) entry, so that it can be enqueued again."""
        await self.queue.remove(entry.id)

    def worker(self, processor: Callable[[Any, str], Awaitable[Any]], name: str) -> Worker:
        s = self.settings
        worker = Worker(
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
        # bullmq reports what goes wrong in its own loop (a lost connection, a script error) only as
        # events: logged, or nobody would know why a worker stopped taking jobs.
        worker.on("error", lambda error, *_: log.warning("queue worker: %s: %s", type(error).__name__, error))
        # Replaced before the worker's loop first runs (it starts the lock manager).
        worker.lockManager = RedeliveryAwareLockManager(
            worker,
            lock_renew_time=worker.opts["lockRenewTime"],
            lock_duration=worker.opts["lockDuration"],
            worker_id=worker.id,
            worker_name=worker.workerName,
        )
        return worker

    @property
    def connection_pool(self) -> ConnectionPool | None:
        """The pool bullmq's clients take their connections from, when it is ours (Sentinel)."""
        return self._connection.get("connection_pool")

    async def close(self) -> None:
        if self._queue is not None:
            await self._queue.close()
        if self.connection_pool is not None:
            await self.connection_pool.disconnect()  # bullmq's clients do not close a pool they were given


def _options(entry: QueueEntry) -> dict[str, Any]:
    return {
        "jobId": entry.id,
        "priority": QUEUE_PRIORITY[entry.priority],
        "removeOnComplete": True,
        "removeOnFail": {"count": 1000},
        # Our processor raises only when Redis failed it (a claim or a hand-back that could not be
        # written): bullmq then delivers the job again after 1, 2, 4 … s instead of failing it.
        # Attempts that run and fail are counted by the runner, not here.
        "attempts": _DELIVERY_ATTEMPTS,
        "backoff": {"type": "exponential", "delay": 1_000},
    }


class RedeliveryAwareLockManager(LockManager):
    """bullmq's lock manager, counting deliveries per job.

    bullmq tracks the locks it renews by job id alone. When a job's lock lapses while its worker
    still runs it (Redis unreachable for longer than the lock), bullmq can deliver the job to that
    same worker again; the earlier delivery's end then untracks the job, the new delivery's lock is
    no longer renewed, lapses in turn, and the job is delivered again and again until it runs out
    of attempts. Here a job stays tracked, under its newest delivery's token, until every delivery
    of it has ended.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deliveries: dict[str, int] = {}

    def track_job(self, job_id: str, token: str, ts: int, should_create_controller: bool = False) -> Any:
        controller = super().track_job(job_id, token, ts, should_create_controller)
        if job_id in self.tracked_jobs:
            self._deliveries[job_id] = self._deliveries.get(job_id, 0) + 1
        return controller

    def untrack_job(self, job_id: str) -> None:
        left = self._deliveries.pop(job_id, 1) - 1
        if left > 0:
            self._deliveries[job_id] = left
        else:
            super().untrack_job(job_id)
