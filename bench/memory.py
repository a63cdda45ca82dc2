"""Redis memory per job, every key included, and what each kind of key costs.

`jobs` jobs are created (each with a request id, so its idempotency key is counted) and handed to the
queue as a worker's relay does; the growth of Redis's `used_memory` divided by `jobs` is the cost of
a queued job. Then, in an emptied Redis, `finished_jobs` jobs are run to COMPLETED by a worker, and
the growth is the cost of a finished job: while it keeps its history (EVENT_HISTORY_TTL_S), and
after, until JOB_TTL_S (the histories deleted here, as their expiry would). Each job asks for one
file. bullmq's event stream is left out: it is capped whatever the number of jobs. The breakdown
samples keys of each kind with `MEMORY USAGE`, shared sorted sets and lists (the tenant's index, the
live set, bullmq's priority set) divided among the jobs.
"""

from __future__ import annotations

import asyncio
import collections
import time

from redis.asyncio import Redis

from bench.env import TENANT, BenchEnv
from bench.report import Row
from jobs.connections import redis_client
from jobs.queue import JobQueue
from jobs.store import JobStore
from worker.relay import Relay

TARGET_BYTES = 2048
_SAMPLE = 200


def run(env: BenchEnv, jobs: int, finished_jobs: int) -> list[Row]:
    measured, listpack_value = asyncio.run(_measure(env, jobs, finished_jobs))
    s = env.settings
    # A finished job is kept JOB_TTL_S, its history only the first EVENT_HISTORY_TTL_S of that.
    with_history, without = measured["finished"][0], measured["after"][0]
    retention_average = without + (with_history - without) * s.event_history_ttl_s / s.job_ttl_s
    redis_setting = f"hash-max-listpack-value {listpack_value}"
    what = {
        "queued": (f"Redis memory per queued job, {jobs:,} jobs ({redis_setting})", True),
        "finished": (f"Redis memory per finished job, {finished_jobs:,} jobs, history kept (EVENT_HISTORY_TTL_S)", False),
        "after": (f"Redis memory per finished job, {finished_jobs:,} jobs, after EVENT_HISTORY_TTL_S", True),
    }
    rows = [
        Row(
            what[name][0],
            f"{per_job:,.0f} B",
            _breakdown(keys),
            "",
            "<= 2 KB" if what[name][1] else "(report)",
            per_job <= TARGET_BYTES if what[name][1] else None,
        )
        for name, (per_job, keys) in measured.items()
    ]
    rows.append(
        Row(
            f"Redis memory per finished job, averaged over JOB_TTL_S ({s.job_ttl_s:,} s)",
            f"{retention_average:,.0f} B",
            f"its history kept the first {s.event_history_ttl_s:,} s",
            "",
            "<= 2 KB",
            retention_average <= TARGET_BYTES,
        )
    )
    return rows


async def _measure(env: BenchEnv, jobs: int, finished_jobs: int) -> tuple[dict[str, tuple[float, dict[str, float]]], str]:
    """(bytes per job, bytes per job by kind of key) for queued jobs, finished ones, and finished ones
    whose history has expired; and Redis's hash-max-listpack-value."""
    await env.seed([70_000])
    measured = {}
    async with redis_client(env.settings) as redis:
        listpack_value = (await redis.config_get("hash-max-listpack-value"))["hash-max-listpack-value"]
        store, queue = JobStore(redis, env.settings), JobQueue(env.settings)
        capped = queue.queue.keys["events"]
        empty = await _used(redis, capped)
        await _create(redis, store, queue, jobs)
        measured["queued"] = ((await _used(redis, capped) - empty) / jobs, await _key_sizes(redis, jobs, capped))
        # Finished jobs: fewer (each is a real run, archive and upload included), from an empty Redis.
        await redis.flushdb()
        empty = await _used(redis, capped)
        await _create(redis, store, queue, finished_jobs)
        worker = env.start_worker("memory", worker_concurrency=32)
        deadline = time.monotonic() + max(120, finished_jobs / 20)
        while sum((await queue.counts()).values()) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the memory benchmark's jobs did not finish in time")
            await asyncio.sleep(0.5)
        env.stop(worker)
        await queue.close()
        used = await _used(redis, capped)
        measured["finished"] = ((used - empty) / finished_jobs, await _key_sizes(redis, finished_jobs, capped))
        # What their expiry does, EVENT_HISTORY_TTL_S after each job ended, done here at once.
        histories = [key async for key in redis.scan_iter(match=store.keys.events("*"), count=1000)]
        if histories and not 0 < await redis.ttl(histories[0]) <= env.settings.event_history_ttl_s:
            raise RuntimeError("a finished job's history does not expire after EVENT_HISTORY_TTL_S")
        for start in range(0, len(histories), 1000):
            await redis.delete(*histories[start:start + 1000])
        measured["after"] = ((await _used(redis, capped) - empty) / finished_jobs, await _key_sizes(redis, finished_jobs, capped))
    return measured, listpack_value


async def _create(redis: Redis, store: JobStore, queue: JobQueue, jobs: int) -> None:
    """`jobs` jobs created as InitiateDownload creates them, and handed to the queue by a relay."""
    for start in range(0, jobs, 500):
        batch = range(start, min(start + 500, jobs))
        await asyncio.gather(*(store.create(TENANT, [70_000], request_id=f"memory-{i}") for i in batch))
        await Relay(redis, store.keys, queue).relay_waiting()


async def _used(redis: Redis, capped: str) -> int:
    """Redis's memory in use, less bullmq's event stream: that is capped (10,000 entries) whatever the
    number of jobs, so over a few thousand jobs it would be counted as a per-job cost it is not."""
    await redis.memory_purge()
    used = int((await redis.info("memory"))["used_memory"])
    return used - (await redis.memory_usage(capped, samples=0) or 0)


async def _key_sizes(redis: Redis, jobs: int, capped: str) -> dict[str, float]:
    """Bytes per job for each kind of key: the average of a sample, times how many there are per job."""
    sizes: dict[str, list[int]] = collections.defaultdict(list)
    counts: collections.Counter[str] = collections.Counter()
    async for key in redis.scan_iter(count=1000):
        if key == capped:
            continue
        kind = _kind(key)
        counts[kind] += 1
        if len(sizes[kind]) < _SAMPLE:
            sizes[kind].append(await redis.memory_usage(key, samples=0) or 0)
    return {kind: sum(values) / len(values) * counts[kind] / jobs for kind, values in sizes.items()}


def _kind(key: str) -> str:
    """A key's kind: its name with the ids taken out."""
    parts = key.split(":")
    return ":".join("*" if len(part) >= 32 or part.isdigit() or part.startswith("memory-") else part for part in parts)


def _breakdown(per_kind: dict[str, float]) -> str:
    shown = sorted(((size, kind) for kind, size in per_kind.items() if size >= 1), reverse=True)
    return "; ".join(f"{kind} {size:,.0f} B" for size, kind in shown)
