"""The work queue: how soon an idle worker starts a new job, and how many trivial jobs one worker
process gets through per second against bullmq's own no-op rate."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from bench.env import TENANT, BenchEnv
from bench.report import Row, median, percentile
from jobs.connections import redis_client
from jobs.keys import CHANNEL_SEPARATOR
from jobs.model import F
from jobs.queue import JobQueue
from jobs.store import JobStore
from worker.relay import Relay


class EventTap:
    """Every job event as it is published, with the time it arrived here."""

    def __init__(self, redis, channel: str) -> None:  # noqa: ANN001
        self._pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._channel = channel
        self.events: asyncio.Queue[tuple[float, dict]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> EventTap:
        await self._pubsub.subscribe(self._channel)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._pubsub.aclose()

    async def _read(self) -> None:
        async for message in self._pubsub.listen():
            self.events.put_nowait((time.perf_counter(), json.loads(message["data"].partition(CHANNEL_SEPARATOR)[2])))

    async def until(self, job_id: str, state: str) -> float:
        while True:
            at, event = await asyncio.wait_for(self.events.get(), 30)
            if event[F.ID] == job_id and event[F.STATE] == state:
                return at


async def _start_latency(env: BenchEnv, samples: int) -> list[float]:
    """From sending a job's create (what InitiateDownload does) to RUNNING: through the idle worker's
    relay, bullmq, and the worker's claim."""
    await env.seed([70_000])
    async with redis_client(env.settings) as redis:
        store = JobStore(redis, env.settings)
        latencies = []
        async with EventTap(redis, store.keys.events_channel) as tap:
            for _ in range(samples + 3):  # the first few warm the worker up
                sent = time.perf_counter()
                fields, _ = await store.create(TENANT, [70_000])
                latencies.append(await tap.until(fields[F.ID], "RUNNING") - sent)
                await tap.until(fields[F.ID], "COMPLETED")  # idle again before the next
    return latencies[3:]


async def _noop_rate(env: BenchEnv, count: int) -> float:
    async with redis_client(env.settings) as redis:
        store, queue = JobStore(redis, env.settings), JobQueue(env.settings)
        for start in range(0, count, 500):
            await asyncio.gather(*(store.create(TENANT, [70_000]) for _ in range(min(500, count - start))))
        # Relayed here, before the clock starts, as the baseline's jobs are added before its clock.
        await Relay(redis, store.keys, queue).relay_waiting()
        await queue.close()
        async with EventTap(redis, store.keys.events_channel) as tap:
            worker = env.start_worker("noop", module="bench.noop_worker")
            first = last = None
            finished = 0
            while finished < count:
                at, event = await asyncio.wait_for(tap.events.get(), 60)
                if event[F.STATE] == "RUNNING" and first is None:
                    first = at
                elif event[F.STATE] == "COMPLETED":
                    finished, last = finished + 1, at
            env.stop(worker)
    assert first is not None and last is not None
    return count / (last - first)


def _bullmq_rate(env: BenchEnv, count: int) -> float:
    s = env.settings
    argv = [
        sys.executable,
        "-m",
        "bench.bullmq_noop",
        s.redis_url,
        "bench-baseline",
        "noop",
        str(count),
        str(s.worker_concurrency),
    ]
    reply = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(reply.stdout)["jobs_per_s"]


def run(env: BenchEnv, samples: int, jobs: int, rounds: int) -> list[Row]:
    """The trivial-job rates are measured `rounds` times, ours and bullmq's taking turns, and the
    medians compared: one run of each lasts a second or two, and such a pair swings by ±20 %."""
    worker = env.start_worker("idle")
    time.sleep(2)  # connected and idle
    latencies = asyncio.run(_start_latency(env, samples))
    env.stop(worker)
    rates = [(asyncio.run(_noop_rate(env, jobs)), _bullmq_rate(env, jobs)) for _ in range(rounds)]
    ours, baseline = median([r[0] for r in rates]), median([r[1] for r in rates])
    p50 = median(latencies) * 1000
    return [
        Row(f"job created -> RUNNING on an idle worker, through its relay ({samples} jobs)",
            f"p50 {p50:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms", "", "", "p50 < 5 ms", p50 < 5),
        Row(f"trivial jobs/s, one worker process ({jobs:,} jobs, concurrency {env.settings.worker_concurrency}, "
            f"median of {rounds})",
            f"{ours:,.0f}/s", f"bullmq no-op {baseline:,.0f}/s",
            f"{ours / baseline:.0%}" + (f" (rounds: {', '.join(f'{o / b:.0%}' for o, b in rates)})" if rounds > 1 else ""),
            ">= 50 %", ours / baseline >= 0.5),
    ]
