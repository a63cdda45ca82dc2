"""Chores every worker process does now and then, safe to run in many processes at once:

sweep:     delete the artifacts of jobs whose retention has passed (each ended job scheduled its
           artifact's deletion when it ended, see lua/transition.lua)
reconcile: put back in the queue every job not yet finished that the queue has lost: never
           enqueued (its relay died on the way), or whose queue entry failed or vanished while the
           record still says QUEUED or RUNNING (Redis was unreachable when a worker had to
           record the outcome, or restarted from an older state)
leftovers: abort multipart uploads no run will finish, delete artifacts no job owns (leftovers.py);
           one worker process a round does it, since it lists the bucket
stats:     sample the queue's depth into the minute's bucket of its history (jobs/stats.py); one worker
           process a round
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from redis.asyncio import Redis

from jobs.model import TERMINAL_STATES, F, Priority, State
from jobs.queue import JobQueue, QueueEntry, entry_id
from jobs.schedule import Schedule
from jobs.settings import Settings
from jobs.stats import QueueHistory
from jobs.store import JobStore, now_ms
from worker.leftovers import LeftoverSweeper

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
        self._live = Schedule(redis, store.keys.live)
        self._leftovers = LeftoverSweeper(settings, redis, store.keys, s3)
        self._history = QueueHistory(store, queue)
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
                if await self._ours("stats"):
                    await self._history.sample()
                if await self._ours("leftovers"):
                    await self._leftovers.abort_stale_uploads()
                    await self._leftovers.delete_orphans()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis or S3 is away: the chores are still scheduled, the next round does them.
                log.warning("housekeeping round failed; trying again next round", exc_info=True)

    async def _ours(self, chore: str) -> bool:
        """Whether this process does `chore` this round: the first to ask in an interval does."""
        lease_ms = max(int(self.settings.housekeeping_interval_s * 1000), 1)
        return bool(await self._redis.set(self._store.keys.chore(chore), "1", nx=True, px=lease_ms))

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
        """Checks the live jobs that are due (each one `ENQUEUE_GRACE_S` after it was created, then
        every lease) and puts back in the queue those it has lost; returns how many."""
        repaired = 0
        grace_ms = int(self.settings.enqueue_grace_s * 1000)
        keys = self._store.keys
        queue = self.settings.queue_name
        while job_ids := await self._live.claim_due(now_ms() - grace_ms, _BATCH, self._lease_ms + grace_ms):
            # Each job's current run has its own queue entry, named by the record's retries (queue.py).
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hget(keys.job(job_id), F.RETRIES)
                runs = [int(retries or 0) for retries in await pipe.execute()]
            # A transaction: each record and its queue entry as of the same instant (a worker ends
            # the record before it removes the entry, so a finishing job never looks lost).
            async with self._redis.pipeline(transaction=True) as pipe:
                for job_id, run in zip(job_ids, runs, strict=True):
                    pipe.hmget(keys.job(job_id), F.STATE, F.PRIORITY, F.TOKEN, F.RETRIES)
                    pipe.hmget(keys.queue_job(queue, entry_id(job_id, run)), "timestamp", "finishedOn")
                replies = await pipe.execute()
            over: list[str] = []
            for job_id, run, (state, priority, token, retries), (queued_ms, finished_ms) in zip(
                job_ids, runs, replies[::2], replies[1::2], strict=True
            ):
                if state is None or state in TERMINAL_STATES:
                    over.append(job_id)  # ended (or forgotten) since it was scheduled
                elif int(retries or 0) != run:
                    pass  # retried since its entry was looked up: checked again when its lease ends
                elif queued_ms is None or finished_ms is not None:
                    entry = QueueEntry(job_id, Priority(priority or Priority.NORMAL), run)
                    repaired += await self._put_back(entry, state, token or "", failed=finished_ms is not None)
                # else the queue holds it: checked again when its lease ends
            await self._live.done(over)
            if len(job_ids) < _BATCH:
                break
        return repaired

    async def _put_back(self, entry: QueueEntry, state: str, token: str, failed: bool) -> bool:
        if state == State.RUNNING:
            message = "its worker could not record how the run ended; waiting for a worker to start it again"
            if not await self._store.hand_back(entry.job_id, token, message):
                return False  # taken by another run, or over, since it was read
        if failed:
            await self._queue.remove(entry)  # bullmq adds an entry id only once
        await self._queue.enqueue(entry)
        what = "failed" if failed else "is missing"
        log.warning("job %s was %s but its queue entry %s; put it back in the queue", entry.job_id, state, what)
        return True
