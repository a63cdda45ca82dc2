"""The workers' relay (worker/relay.py) against a real Redis and bullmq: every created job reaches the
queue, many per round trip, through failures, repeated requests and a time with no worker running."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from jobs.connections import redis_client
from jobs.model import F, Priority
from jobs.queue import JobQueue
from jobs.store import JobStore
from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import SMALL_IDS
from tests.credentials import TENANT
from tests.helpers import initiate, wait_done
from worker.relay import Relay


@pytest.fixture
async def parts(settings):
    redis = redis_client(settings)
    queue = JobQueue(settings)
    yield redis, JobStore(redis, settings), queue
    await queue.close()
    await redis.aclose()


async def states(queue: JobQueue, job_ids: list[str]) -> set[str]:
    return {await queue.queue.getJobState(job_id) for job_id in job_ids}


async def states_are(queue: JobQueue, job_ids: list[str], expected: set[str]) -> bool:
    return await states(queue, job_ids) == expected


async def fresh_is_empty(redis, store: JobStore) -> bool:
    return await redis.llen(store.keys.fresh) == 0


async def blocked_pops(redis, count: int) -> bool:
    """Whether `count` clients of this Redis are blocked in a relay's pop (tests run one at a time)."""
    clients = await redis.client_list()
    return sum(1 for c in clients if c["cmd"] == "blmpop" and "b" in c["flags"]) == count


async def until(condition, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_every_created_job_reaches_the_queue_many_per_round_trip(parts, monkeypatch) -> None:
    redis, store, queue = parts
    batches: list[int] = []
    enqueue_many = queue.enqueue_many

    async def counted(jobs):
        batches.append(len(jobs))
        await enqueue_many(jobs)

    monkeypatch.setattr(queue, "enqueue_many", counted)
    job_ids = [(await store.create(TENANT, [70000], priority=Priority.HIGH))[0][F.ID] for _ in range(1200)]
    assert await states(queue, job_ids[:1]) == {"unknown"}, "creating a job does not enqueue it"
    assert await Relay(redis, store.keys, queue).relay_waiting() == 1200
    assert await states(queue, job_ids) == {"prioritized"}
    assert batches == [500, 500, 200]
    assert await redis.llen(store.keys.fresh) == 0


async def test_a_failed_batch_is_sent_again(parts, monkeypatch, caplog) -> None:
    redis, store, queue = parts
    failures = iter([ConnectionError("Redis blinked")])
    enqueue_many = queue.enqueue_many

    async def flaky(jobs):
        if (error := next(failures, None)) is not None:
            raise error
        await enqueue_many(jobs)

    monkeypatch.setattr(queue, "enqueue_many", flaky)
    relay = Relay(redis, store.keys, queue)
    relay.start()
    try:
        job_ids = [(await store.create(TENANT, [70000]))[0][F.ID] for _ in range(3)]
        await until(lambda: states_are(queue, job_ids, {"prioritized"}))
    finally:
        await relay.close()
    assert "relaying" in caplog.text and "created jobs failed; retrying" in caplog.text


async def test_closing_gives_up_on_a_batch_after_its_time_and_says_so(parts, monkeypatch, caplog) -> None:
    redis, store, queue = parts

    async def down(jobs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(queue, "enqueue_many", down)
    relay = Relay(redis, store.keys, queue)
    relay.start()
    await store.create(TENANT, [70000])
    await until(lambda: fresh_is_empty(redis, store))  # taken, and failing to go in
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        await relay.close(timeout_s=0.3)
    assert time.monotonic() - started < 2
    assert "1 created jobs left for the reconciler to enqueue" in caplog.text


async def test_a_repeated_request_for_a_queued_job_hands_it_to_the_relay_again(parts) -> None:
    redis, store, queue = parts
    first, _ = await store.create(TENANT, [70000], request_id="order-1", priority=Priority.LOW)
    await redis.delete(store.keys.fresh)  # a relay took it and died before enqueueing it
    again, created = await store.create(TENANT, [70000], request_id="order-1", priority=Priority.LOW)
    assert not created and again[F.ID] == first[F.ID]
    assert await redis.lrange(store.keys.fresh, 0, -1) == [f"{first[F.ID]} LOW"]


async def test_jobs_created_while_no_worker_runs_start_when_one_does(make_stack) -> None:
    stack = await make_stack(workers=0)
    jobs = await asyncio.gather(*(initiate(stack.stub, SMALL_IDS[:1]) for _ in range(5)))
    await stack.add_worker()
    for job in jobs:
        assert (await wait_done(stack.stub, job.job_id)).state == pb.JOB_STATE_COMPLETED


async def test_closing_a_relay_blocked_on_an_empty_list_ends_its_wait(parts) -> None:
    # Cancelling a blocked redis-py command can hang its task for good; close() wakes the pop instead.
    redis, store, queue = parts
    for _ in range(20):
        relay = Relay(redis, store.keys, queue)
        relay.start()
        await until(lambda: blocked_pops(redis, 1))
        await asyncio.wait_for(relay.close(), 3)
        await until(lambda: blocked_pops(redis, 0))
    assert await redis.keys(f"{store.keys.fresh}:*") == [], "no wake key is left behind"
