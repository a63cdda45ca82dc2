"""The backlog the workers are scaled on (/queue-depth): every job not yet finished, wherever it
waits. With no worker running, jobs wait in the fresh list, outside bullmq; once a relay enqueues
them they are in bullmq's prioritized set, not its wait list."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import SMALL_IDS
from tests.helpers import initiate, wait_done


def depth(stack) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.server.http_port}/queue-depth", timeout=10) as reply:
        return json.loads(reply.read())


async def until_depth(stack, wanted: dict[str, int], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while (seen := await asyncio.to_thread(depth, stack)) | wanted != seen:
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.05)


async def test_the_backlog_counts_jobs_wherever_they_wait(make_stack) -> None:
    stack = await make_stack(workers=0, delay_min_ms=1_500, delay_max_ms=1_500)
    jobs = [await initiate(stack.stub, SMALL_IDS[:1]) for _ in range(3)]
    await until_depth(stack, {"backlog": 3, "fresh": 3, "prioritized": 0, "waiting": 0, "active": 0})

    await stack.add_worker(worker_concurrency=1)  # its relay enqueues all three, it runs one
    await until_depth(stack, {"backlog": 3, "fresh": 0, "prioritized": 2, "waiting": 0, "active": 1})

    for job in jobs:
        assert (await wait_done(stack.stub, job.job_id)).state == pb.JOB_STATE_COMPLETED
    await until_depth(stack, {"backlog": 0})
