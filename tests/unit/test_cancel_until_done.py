"""Stopping a worker's background tasks cannot hang on a task that swallowed its cancellation."""

from __future__ import annotations

import asyncio

from worker.runner import cancel_until_done


async def _swallows_one_cancellation() -> None:
    swallowed = False
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed = True  # as a library below a loop sometimes does


async def _fails() -> None:
    raise RuntimeError("already failed")


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    stubborn = asyncio.create_task(_swallows_one_cancellation())
    failed = asyncio.create_task(_fails())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done([stubborn, failed], every_s=0.05), timeout=5)
    assert stubborn.cancelled()
    assert isinstance(failed.exception(), RuntimeError)


async def test_one_cancellation_alone_would_leave_it_running() -> None:
    stubborn = asyncio.create_task(_swallows_one_cancellation())
    await asyncio.sleep(0)
    stubborn.cancel()
    done, _ = await asyncio.wait([stubborn], timeout=0.2)
    assert not done, "the loop carried on after its cancellation was swallowed"
    await cancel_until_done([stubborn], every_s=0.05)
