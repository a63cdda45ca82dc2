"""Notification latency: a worker's progress write until the watching client has it, with many jobs
progressing at once and every one watched, against the original design's polling of GetStatus every 2 s.
The writer stands in for the workers: it claims each job and writes progress through the job store,
exactly the calls a worker makes, putting its send time in the message."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

from bench.env import TENANT, BenchEnv
from bench.report import Row, percentile
from bench.watchers import WatcherPool, stamp
from jobs.connections import redis_client
from jobs.model import F
from jobs.store import JobStore

WATCH_PROCESSES = 2
POLL_INTERVAL_S = 2.0


async def _create_claimed(store: JobStore, count: int) -> dict[str, str]:
    """`count` RUNNING jobs (no worker needed): job id -> run token."""
    tokens: dict[str, str] = {}

    async def one(index: int) -> None:
        fields, _ = await store.create(TENANT, [70_000 + index % 1000])
        token = uuid.uuid4().hex
        await store.claim(fields[F.ID], "bench-writer", token)
        tokens[fields[F.ID]] = token

    for start in range(0, count, 200):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 200, count))))
    return tokens


async def _write_progress(store: JobStore, tokens: dict[str, str], per_job_hz: float, duration_s: float) -> int:
    """Each job reports progress `per_job_hz` times a second, at random phases, for `duration_s`."""
    written = 0
    deadline = time.monotonic() + duration_s

    async def job(job_id: str, token: str) -> None:
        nonlocal written
        await asyncio.sleep(random.uniform(0, 1 / per_job_hz))
        percent = 0
        while time.monotonic() < deadline:
            percent = (percent + 1) % 100
            await store.report(job_id, token, {F.PERCENT: percent, F.MESSAGE: stamp()})
            written += 1
            await asyncio.sleep(1 / per_job_hz)

    await asyncio.gather(*(job(j, t) for j, t in tokens.items()))
    return written


def _measure(env: BenchEnv, address: str, tokens: dict[str, str], duration_s: float, poll: bool) -> tuple[list[float], int]:
    pool = WatcherPool(address, env.metadata, list(tokens), 1 if poll else WATCH_PROCESSES, POLL_INTERVAL_S if poll else 0.0)
    pool.start()

    async def write() -> int:
        redis = redis_client(env.settings)
        try:
            return await _write_progress(JobStore(redis, env.settings), tokens, 1.0, duration_s)
        finally:
            await redis.aclose()

    written = asyncio.run(write())
    time.sleep(0.5)  # the last events in flight
    return pool.stop(), written


def run(env: BenchEnv, jobs: int, duration_s: float) -> list[Row]:
    _, address = env.start_server()

    async def setup() -> dict[str, str]:
        redis = redis_client(env.settings)
        try:
            return await _create_claimed(JobStore(redis, env.settings), jobs)
        finally:
            await redis.aclose()

    tokens = asyncio.run(setup())
    pushed, written = _measure(env, address, tokens, duration_s, poll=False)
    # Polling a tenth of the jobs is enough to see its latency (a change waits for the next poll).
    polled_jobs = dict(list(tokens.items())[: max(jobs // 10, 10)])
    # Three polls each; one in a short (smoke) run, whose figures mean little anyway.
    poll_window_s = 3 * POLL_INTERVAL_S if duration_s >= POLL_INTERVAL_S else POLL_INTERVAL_S + duration_s
    polled, polled_written = _measure(env, address, polled_jobs, poll_window_s, poll=True)
    p50, p99 = percentile(pushed, 0.5) * 1000, percentile(pushed, 0.99) * 1000
    poll_p50 = percentile(polled, 0.5) * 1000
    return [
        Row(
            f"progress write -> watcher has it, {jobs:,} jobs watched, each 1 update/s",
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(pushed):,} of {written:,} events)",
            f"polling every {POLL_INTERVAL_S:.0f} s: p50 {poll_p50:.0f} ms, "
            f"sees {len(polled) / max(polled_written, 1):.0%} of changes",
            f"{poll_p50 / p50:,.0f} x sooner",
            "p50 < 5 ms, p99 < 50 ms",
            p50 < 5 and p99 < 50,
        )
    ]
