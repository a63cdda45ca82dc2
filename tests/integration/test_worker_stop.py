"""A worker's stop is safe to call twice (a signal handler and a `finally` may both call it) and
before its start."""

from __future__ import annotations

import asyncio

import pytest

from jobs.settings import Settings
from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import SMALL_IDS
from tests.helpers import initiate, wait_done, wait_running_on
from worker.runner import WorkerRunner


async def test_a_worker_stopped_twice_at_once_and_once_more_stops_once(make_stack) -> None:
    stack = await make_stack(workers=0)
    runner = await stack.add_worker()
    await wait_done(stack.stub, (await initiate(stack.stub, SMALL_IDS[:1])).job_id)
    await asyncio.wait_for(asyncio.gather(runner.stop(), runner.stop()), 30)
    await asyncio.wait_for(runner.stop(), 5)


async def test_a_worker_that_never_started_stops(settings: Settings) -> None:
    await asyncio.wait_for(WorkerRunner(settings).stop(), 10)


async def test_a_stop_whose_caller_gave_up_still_ends_and_a_second_stop_waits_for_it(make_stack) -> None:
    stack = await make_stack(workers=0, delay_min_ms=400, delay_max_ms=400)
    runner = await stack.add_worker()
    job = await initiate(stack.stub, SMALL_IDS[:3])
    await wait_running_on(stack, job.job_id)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(runner.stop(), 0.05)  # e.g. a supervisor's deadline cancels the first stop
    await asyncio.wait_for(runner.stop(), 30)
    assert (await wait_done(stack.stub, job.job_id)).state == pb.JOB_STATE_COMPLETED, "the job was let finish"
