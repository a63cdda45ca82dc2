"""Hands created jobs to the work queue: the workers' side of `InitiateDownload`.

`create.lua` appends each job it writes to the fresh list, so the server answers after that one
script and never talks to bullmq. Each worker process runs a relay blocked on the list: whichever
wakes first takes up to a batch of jobs and adds them to bullmq in one round trip (`addBulk`). A batch
that fails to go in is retried while the process lives; if the process dies holding one, the
reconciler enqueues those jobs ENQUEUE_GRACE_S after they were created (housekeeping.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import cast

from redis.asyncio import Redis

from jobs.keys import FRESH_SEPARATOR, Keys
from jobs.model import Priority
from jobs.queue import JobQueue, QueueEntry

log = logging.getLogger(__name__)

_MAX_BATCH = 500
# The blocking pop's timeout: well under the connection's socket timeout (connections.py).
_BLOCK_S = 5
_BACKOFF_CAP_S = 5.0


def _parse(entry: str) -> QueueEntry:
    """"{id} {priority}" from a create, "{id} {priority} {retries}" from a retry."""
    job_id, priority, *retries = entry.split(FRESH_SEPARATOR)
    return QueueEntry(job_id, Priority(priority), int(retries[0]) if retries else 0)


class Relay:
    """Lifecycle: `start()`, then `close()`, which lets a batch on its way go in first."""

    def __init__(self, redis: Redis, keys: Keys, queue: JobQueue) -> None:
        self._redis = redis
        self._fresh = keys.fresh
        # The blocking pop also listens here, so close() can end it: cancelling a blocked redis-py
        # command can leave the task hanging for good (redis/redis-py#2579).
        self._wake = keys.relay_wake(uuid.uuid4().hex)
        self._queue = queue
        self._batch: list[QueueEntry] = []  # taken from the list, not yet in the queue
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self, timeout_s: float = 5.0) -> None:
        if self._task is None:
            return
        self._closing = True
        try:
            await self._redis.rpush(self._wake, "stop")
        except Exception:
            log.debug("could not wake the relay", exc_info=True)
        await asyncio.wait([self._task], timeout=timeout_s)
        if self._batch:
            log.warning("%d created jobs left for the reconciler to enqueue", len(self._batch))
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task], timeout=1.0)
        try:
            await self._redis.delete(self._wake)
        except Exception:
            log.debug("could not delete the relay's wake key", exc_info=True)

    async def relay_waiting(self) -> int:
        """Enqueues every job in the list now, without waiting for more; returns how many."""
        relayed = 0
        while await self._take(block=False):
            relayed += len(self._batch)
            await self._send()
        return relayed

    async def _run(self) -> None:
        backoff_s = 0.05
        while not self._closing or self._batch:
            try:
                if self._batch or await self._take(block=True):
                    await self._send()
                backoff_s = 0.05
            except Exception:
                log.warning("relaying %d created jobs failed; retrying in %.2fs", len(self._batch), backoff_s, exc_info=True)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _BACKOFF_CAP_S)

    async def _take(self, block: bool) -> bool:
        if block:
            popped = await self._redis.blmpop(_BLOCK_S, 2, self._fresh, self._wake, direction="LEFT", count=_MAX_BATCH)
        else:
            popped = await self._redis.lmpop(1, self._fresh, direction="LEFT", count=_MAX_BATCH)
        if not popped or popped[0] == self._wake:
            return False
        self._batch = [_parse(cast(str, entry)) for entry in popped[1]]
        return True

    async def _send(self) -> None:
        await self._queue.enqueue_many(self._batch)
        self._batch = []
