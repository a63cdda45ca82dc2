"""Chores every worker process does now and then, safe to run in many processes at once:

sweep:     delete the artifacts of jobs whose retention has passed (each ended job scheduled its
           artifact's deletion when it ended, see lua/transition.lua)
reconcile: enqueue jobs that were written but never enqueued (their server died in between)
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from redis.asyncio import Redis

from jobs.model import F, TERMINAL_STATES, Priority
from jobs.queue import JobQueue
from jobs.schedule import Schedule
from jobs.settings import Settings
from jobs.store import JobStore, now_ms

log = logging.getLogger(__name__)

_BATCH = 500  # S3's DeleteObjects takes up to 1,000 keys


class Housekeeper:
    def __init__(self, settings: Settings, redis: Redis, store: JobStore, queue: JobQueue, s3: Any) -> None:
        self.settings = settings
        self._redis = redis
        self._store = store
        self._queue = queue
        self._s3 = s3
        self._sweep = Schedule(redis, store.keys.sweep)
        self._outbox = Schedule(redis, store.keys.outbox)
        # A chore whose taker died is taken again after this long.
        self._lease_ms = int(max(settings.housekeeping_interval_s * 5, 1) * 1000)

    async def run(self) -> None:
        """Does the chores every interval (jittered, so workers started together spread out)."""
        interval = self.settings.housekeeping_interval_s
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))
            try:
                await self.sweep()
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis or S3 is away: the chores are still scheduled, the next round does them.
                log.warning("housekeeping round failed; trying again next round", exc_info=True)

    async def sweep(self) -> int:
        """Deletes due artifacts; returns how many were deleted."""
        deleted = 0
        while keys := await self._sweep.claim_due(now_ms(), _BATCH, self._lease_ms):
            reply = await self._s3.delete_objects(
                Bucket=self.settings.artifact_bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
            failed = {error["Key"] for error in reply.get("Errors", [])}
            if failed:
                log.warning("could not delete %d expired artifacts (retried later): %s", len(failed), reply["Errors"][:3])
            done = [key for key in keys if key not in failed]
            await self._sweep.done(done)
            deleted += len(done)
            if len(keys) < _BATCH:
                break
        if deleted:
            log.info("deleted %d expired artifacts", deleted)
        return deleted

    async def reconcile(self) -> int:
        """Enqueues live jobs the queue does not hold; returns how many were enqueued."""
        enqueued = 0
        grace_ms = int(self.settings.enqueue_grace_s * 1000)
        keys = self._store.keys
        while job_ids := await self._outbox.claim_due(now_ms() - grace_ms, _BATCH, self._lease_ms + grace_ms):
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(keys.job(job_id), F.STATE, F.PRIORITY)
                    pipe.exists(keys.queue_job(self.settings.queue_name, job_id))
                replies = await pipe.execute()
            for job_id, (state, priority), queued in zip(job_ids, replies[::2], replies[1::2]):
                if state is not None and state not in TERMINAL_STATES and not queued:
                    log.warning("job %s was written but never enqueued (its server stopped in between); enqueueing it", job_id)
                    await self._queue.enqueue(job_id, Priority(priority or Priority.NORMAL))
                    enqueued += 1
            await self._outbox.done(job_ids)
            if len(job_ids) < _BATCH:
                break
        return enqueued
