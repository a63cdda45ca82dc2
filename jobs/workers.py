"""Which workers are alive: each reports to Redis every few seconds, and whoever asks counts the recent
reports. (Workers have no port a server could probe, and bullmq's own worker list is CLIENT LIST,
which counts connections, not running event loops.)"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from jobs.keys import Keys

log = logging.getLogger(__name__)

REPORT_EVERY_S = 5.0
# Three missed reports: gone.
ALIVE_WITHIN_S = 3 * REPORT_EVERY_S
# Names of workers gone for this long are dropped from the set.
FORGET_AFTER_S = 3600.0


class WorkerRegistry:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.workers

    async def report(self, name: str) -> None:
        await self._redis.zadd(self._key, {name: int(time.time() * 1000)})

    async def keep_reporting(self, name: str) -> None:
        """Reports every REPORT_EVERY_S until cancelled; a failed report is retried at the next one."""
        while True:
            try:
                await self.report(name)
            except Exception as error:  # noqa: BLE001 - Redis away: the count drops, which is the truth
                log.debug("could not report to the worker registry: %s", error)
            await asyncio.sleep(REPORT_EVERY_S)

    async def leave(self, name: str) -> None:
        await self._redis.zrem(self._key, name)

    async def alive(self) -> int:
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self._key, "-inf", now_ms - FORGET_AFTER_S * 1000)
            pipe.zcount(self._key, now_ms - ALIVE_WITHIN_S * 1000, "+inf")
            _, count = await pipe.execute()
        return int(count)
