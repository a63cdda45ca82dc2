"""The reconciler (worker/housekeeping.py) against a real Redis and bullmq: every job not yet finished
whose queue entry is gone or failed goes back in the queue; healthy and finished jobs are left alone."""

from __future__ import annotations

import asyncio

import pytest
from bullmq.custom_errors import UnrecoverableError

from jobs.connections import redis_client
from jobs.errors import RunSuperseded
from jobs.model import F, Priority, State
from jobs.queue import JobQueue, QueueEntry
from jobs.store import JobStore
from tests.conftest import SMALL_IDS
from tests.credentials import TENANT
from tests.helpers import check_archive, wait_done
from worker.housekeeping import Housekeeper


@pytest.fixture
async def parts(settings):
    settings = settings.replace(enqueue_grace_s=0)
    redis = redis_client(settings)
    store = JobStore(redis, settings)
    queue = JobQueue(settings)
    yield store, queue, Housekeeper(settings, redis, store, queue, s3=None)
    await queue.close()
    await redis.aclose()


async def fail_in_queue(queue: JobQueue, job_id: str) -> None:
    """Ends the job's queue entry in bullmq's failed set, as a processor that Redis failed leaves it."""
    ended = asyncio.Event()

    async def processor(job, token):
        ended.set()
        raise UnrecoverableError("the job store (Redis) is unreachable")

    worker = queue.worker(processor, "failing-worker")
    await asyncio.wait_for(ended.wait(), 10)
    await worker.close()
    assert await queue.queue.getJobState(job_id) == "failed"


async def test_a_running_job_whose_queue_entry_failed_is_handed_back_and_its_run_fenced(parts, make_stack) -> None:
    store, queue, housekeeper = parts
    fields, _ = await store.create(TENANT, SMALL_IDS[:2])
    job_id = fields[F.ID]
    await queue.enqueue(QueueEntry(job_id, Priority.NORMAL))
    await store.redis.delete(store.keys.fresh)  # enqueued here, not by a relay
    assert await store.claim(job_id, "lost-worker", "lost-run") is not None
    await fail_in_queue(queue, job_id)

    assert await housekeeper.reconcile() == 1
    record = await store.get(job_id, None)
    assert record[F.STATE] == State.QUEUED and "could not record" in record[F.MESSAGE], record
    assert await queue.queue.getJobState(job_id) == "prioritized"
    with pytest.raises(RunSuperseded):
        await store.report(job_id, "lost-run", {F.PERCENT: 50})
    assert await housekeeper.reconcile() == 0, "put back once"

    stack = await make_stack()
    done = await wait_done(stack.stub, job_id)
    assert done.attempts == 2, "the lost run counted, and one more ran"
    check_archive(done, SMALL_IDS[:2])
    assert await store.redis.zscore(store.keys.live, job_id) is None, "a finished job is no longer checked"


async def test_a_queued_job_whose_queue_entry_failed_or_vanished_is_enqueued_again(parts) -> None:
    store, queue, housekeeper = parts
    failed, vanished = [(await store.create(TENANT, SMALL_IDS[:1]))[0][F.ID] for _ in range(2)]
    await store.redis.delete(store.keys.fresh)
    await queue.enqueue(QueueEntry(failed, Priority.NORMAL))
    await fail_in_queue(queue, failed)  # its claim never reached Redis: the record is still QUEUED

    assert await housekeeper.reconcile() == 2
    assert {await queue.queue.getJobState(j) for j in (failed, vanished)} == {"prioritized"}
    for job_id in (failed, vanished):
        assert (await store.get(job_id, None))[F.STATE] == State.QUEUED


async def test_healthy_and_finished_jobs_are_left_alone(parts) -> None:
    store, queue, housekeeper = parts
    queued, running, cancelled = [(await store.create(TENANT, SMALL_IDS[:1]))[0][F.ID] for _ in range(3)]
    for job_id in (queued, running):
        await queue.enqueue(QueueEntry(job_id, Priority.NORMAL))
    await store.claim(running, "busy-worker", "its-run")
    await store.cancel(cancelled, TENANT)

    assert await housekeeper.reconcile() == 0
    assert await queue.queue.getJobState(cancelled) == "unknown", "a finished job is not enqueued"
    assert await store.report(running, "its-run", {F.PERCENT: 50}), "the running job's run still owns it"
    live = await store.redis.zrange(store.keys.live, 0, -1)
    assert sorted(live) == sorted([queued, running]), "checked again later; the cancelled job left at once"


async def test_a_retried_job_whose_run_never_reached_the_queue_gets_that_runs_entry(parts) -> None:
    store, queue, housekeeper = parts
    job_id = (await store.create(TENANT, SMALL_IDS[:1]))[0][F.ID]
    await queue.enqueue(QueueEntry(job_id, Priority.NORMAL))  # the first run's entry, still waiting
    await store.cancel(job_id, TENANT)
    await store.retry(job_id, TENANT)
    await store.redis.delete(store.keys.fresh)  # the relay lost the retry's entry

    assert await housekeeper.reconcile() == 1, "the first run's entry does not stand for the retry's"
    assert await queue.queue.getJobState(f"{job_id}.1") == "prioritized"
    assert await housekeeper.reconcile() == 0
