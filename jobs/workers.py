"""Which workers are alive and what each runs: each reports to Redis every few seconds, and whoever asks
reads the recent reports. (Workers have no port a server could probe, and bullmq's own worker list is
CLIENT LIST, which counts connections, not running event loops.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from jobs.keys import Keys

log = logging.getLogger(__name__)

REPORT_EVERY_S = 5.0
# Reports on change come no closer than this: a busy worker's jobs change hundreds of times a second,
# and a report each time cost a quarter of its throughput on short jobs (BENCHMARKS.md).
REPORT_GAP_S = 0.5
# Three missed reports: gone.
ALIVE_WITHIN_S = 3 * REPORT_EVERY_S
# Names of workers gone for this long are dropped from the set.
FORGET_AFTER_S = 3600.0


@dataclass(frozen=True)
class WorkerReport:
    name: str
    seen_ms: int
    running: list[str]  # job ids


class WorkerRegistry:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.workers
        self._running_key = keys.workers_running
        self._changed = asyncio.Event()

    async def report(self, name: str, running: list[str]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._key, {name: int(time.time() * 1000)})
            pipe.hset(self._running_key, name, json.dumps(running))
            await pipe.execute()

    def changed(self) -> None:
        """What this worker runs changed: the next report goes now, not at its time."""
        self._changed.set()

    async def keep_reporting(self, name: str, running: Callable[[], list[str]]) -> None:
        """Reports every REPORT_EVERY_S, and when told the jobs it runs changed (at most every
        REPORT_GAP_S), with the job ids `running()` gives, until cancelled; a failed report is retried
        at the next one."""
        while True:
            self._changed.clear()
            try:
                await self.report(name, running())
            except Exception as error:  # noqa: BLE001 - Redis away: the count drops, which is the truth
                log.debug("could not report to the worker registry: %s", error)
            await asyncio.sleep(REPORT_GAP_S)  # the changes meanwhile go in one report
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REPORT_EVERY_S - REPORT_GAP_S)

    async def leave(self, name: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._key, name)
            pipe.hdel(self._running_key, name)
            await pipe.execute()

    async def reports(self) -> list[WorkerReport]:
        """The workers alive, by name, with the jobs each ran at its last report."""
        now_ms = int(time.time() * 1000)
        # (Replies are str: decode_responses, connections.py.)
        seen = cast(
            list[tuple[str, float]],
            await self._redis.zrangebyscore(self._key, now_ms - ALIVE_WITHIN_S * 1000, "+inf", withscores=True),
        )
        if not seen:
            return []
        by_name = dict(seen)
        names = sorted(by_name)
        running = cast(list[str | None], await self._redis.hmget(self._running_key, names))
        return [
            WorkerReport(name, int(by_name[name]), json.loads(jobs or "[]")) for name, jobs in zip(names, running, strict=True)
        ]

    async def alive(self) -> int:
        now_ms = int(time.time() * 1000)
        forget_before = now_ms - FORGET_AFTER_S * 1000
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self._key, "-inf", forget_before)
            pipe.zremrangebyscore(self._key, "-inf", forget_before)
            pipe.zcount(self._key, now_ms - ALIVE_WITHIN_S * 1000, "+inf")
            forgotten, _, count = await pipe.execute()
        if forgotten:  # rare: a worker gone for an hour
            await self._redis.hdel(self._running_key, *forgotten)
        return int(count)
