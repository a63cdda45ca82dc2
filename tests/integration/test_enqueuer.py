"""The server's enqueue relay (server/enqueuer.py) against a real Redis and bullmq: every job it is
given reaches the queue, through failures and a server stop."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from jobs.model import Priority
from jobs.queue import JobQueue
from longhaul.download.v1 import download_pb2 as pb
from server.enqueuer import Enqueuer
from tests.conftest import SMALL_IDS


@pytest.fixture
async def queue(settings):
    queue = JobQueue(settings)
    yield queue
    await queue.close()


async def until_sent(enqueuer: Enqueuer, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while enqueuer.backlog:
        assert time.monotonic() < deadline, f"{enqueuer.backlog} jobs still waiting"
        await asyncio.sleep(0.01)


async def states(queue: JobQueue, job_ids: list[str]) -> set[str]:
    return {await queue.queue.getJobState(job_id) for job_id in job_ids}


async def test_every_submitted_job_reaches_the_queue_many_per_round_trip(queue, monkeypatch) -> None:
    batches: list[int] = []
    enqueue_many = queue.enqueue_many

    async def counted(jobs):  # noqa: ANN001
        batches.append(len(jobs))
        await enqueue_many(jobs)

    monkeypatch.setattr(queue, "enqueue_many", counted)
    enqueuer = Enqueuer(queue)
    enqueuer.start()
    job_ids = [str(uuid.uuid4()) for _ in range(1200)]
    for job_id in job_ids:
        enqueuer.submit(job_id, Priority.HIGH)
    await until_sent(enqueuer)
    await enqueuer.close()
    assert await states(queue, job_ids) == {"prioritized"}
    assert sum(batches) == 1200 and max(batches) == 500, batches  # submitted in one go: full batches


async def test_a_failed_batch_is_sent_again(queue, monkeypatch, caplog) -> None:
    failures = iter([ConnectionError("Redis blinked")])
    enqueue_many = queue.enqueue_many

    async def flaky(jobs):  # noqa: ANN001
        if (error := next(failures, None)) is not None:
            raise error
        await enqueue_many(jobs)

    monkeypatch.setattr(queue, "enqueue_many", flaky)
    enqueuer = Enqueuer(queue)
    enqueuer.start()
    job_ids = [str(uuid.uuid4()) for _ in range(3)]
    for job_id in job_ids:
        enqueuer.submit(job_id, Priority.NORMAL)
    await until_sent(enqueuer)
    await enqueuer.close()
    assert await states(queue, job_ids) == {"prioritized"}
    assert "enqueueing 3 jobs failed; retrying" in caplog.text


async def test_closing_gives_up_after_its_time_and_says_so(queue, monkeypatch, caplog) -> None:
    async def down(jobs):  # noqa: ANN001
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(queue, "enqueue_many", down)
    enqueuer = Enqueuer(queue)
    enqueuer.start()
    enqueuer.submit(str(uuid.uuid4()), Priority.NORMAL)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        await enqueuer.close(timeout_s=0.3)
    assert time.monotonic() - started < 2
    assert "1 created jobs left for the reconciler to enqueue" in caplog.text


async def test_jobs_created_just_before_a_server_stops_are_in_the_queue(make_stack) -> None:
    stack = await make_stack(workers=0)
    replies = await asyncio.gather(
        *(stack.stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=SMALL_IDS[:1])) for _ in range(40))
    )
    await stack.server.stop()
    queue = JobQueue(stack.settings)
    try:
        assert await states(queue, [reply.job.job_id for reply in replies]) == {"prioritized"}
    finally:
        await queue.close()
