"""Hands created jobs to the work queue: the workers' side of `InitiateDownload`.

`create.lua` appends each job it writes to the fresh list, so the server answers after that one
script and never talks to bullmq. Each worker process runs a relay blocked on the list: whichever
wakes first takes up to a batch of jobs and adds them to bullmq in one round trip (`addBulk`). A batch
that fails to go in is retried while the process lives; if the process dies holding one, the
reconciler enqueues those jobs from the outbox after ENQUEUE_GRACE_S (housekeeping.py).
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from jobs.keys import Keys
from jobs.model import Priority
from jobs.queue import JobQueue

log = logging.getLogger(__name__)

_MAX_BATCH = 500
# The blocking pop's timeout: well under the connection's socket timeout (connections.py).
_BLOCK_S = 5
_BACKOFF_CAP_S = 5.0


def parse(entry: str) -> tuple[str, Priority]:
    job_id, _, priority = entry.partition(" ")
    return job_id, Priority(priority)


class Relay:
    """Lifecycle: `start()`, then `close()`, which lets a batch on its way go in first."""

    def __init__(self, redis: Redis, keys: Keys, queue: JobQueue) -> None:
        self._redis = redis
        self._fresh = keys.fresh
        self._queue = queue
        self._batch: list[tuple[str, Priority]] = []  # taken from the list, not yet in the queue
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._task is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._batch and not self._task.done() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._batch:
            log.warning("%d created jobs left for the reconciler to enqueue", len(self._batch))
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def relay_waiting(self) -> int:
        """Enqueues every job in the list now, without waiting for more; returns how many."""
        relayed = 0
        while await self._take(block=False):
            relayed += len(self._batch)
            await self._send()
        return relayed

    async def _run(self) -> None:
        backoff_s = 0.05
        while True:
            try:
                if self._batch or await self._take(block=True):
                    await self._send()
                backoff_s = 0.05
            except Exception:  # noqa: BLE001 - retried; the reconciler is the backstop
                log.warning("relaying %d created jobs failed; retrying in %.2fs", len(self._batch), backoff_s, exc_info=True)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _BACKOFF_CAP_S)

    async def _take(self, block: bool) -> bool:
        if block:
            popped = await self._redis.blmpop(_BLOCK_S, 1, self._fresh, direction="LEFT", count=_MAX_BATCH)
        else:
            popped = await self._redis.lmpop(1, self._fresh, direction="LEFT", count=_MAX_BATCH)
        if popped:
            self._batch = [parse(entry) for entry in popped[1]]
        return bool(popped)

    async def _send(self) -> None:
        await self._queue.enqueue_many(self._batch)
        self._batch = []
