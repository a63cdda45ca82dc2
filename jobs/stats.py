"""The queue's recent history, a bucket per minute, for the operator page's charts: how many jobs
waited and ran, how many ended each way, and the failures by error code.

Endings are counted by the script that ends a job (`transition.lua`), so every one is counted once,
whichever process ended it. The depth is sampled: by the worker that does the housekeeping round, and by
every read of the history, so the current minute is fresh while someone looks. Buckets expire after
STATS_KEEP_S; nothing here is needed for the service to work, so a lost bucket is a gap in a chart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import cast

from jobs.keys import FAILED_PREFIX, MINUTE_MS, STATS_KEEP_S
from jobs.queue import JobQueue
from jobs.store import JobStore

# A bucket's fields beside the states' counts and the "failed:{code}" ones.
QUEUED, RUNNING = "queued", "running"


@dataclass(frozen=True)
class Depth:
    fresh: int  # created, not yet handed to the queue by a relay
    waiting: int
    delayed: int  # backing off after a transient error
    active: int

    @property
    def queued(self) -> int:
        return self.fresh + self.waiting + self.delayed


@dataclass
class Minute:
    start_ms: int
    queued: int | None = None  # the last sample in the minute; None: none was taken
    running: int | None = None
    ended: dict[str, int] = field(default_factory=dict)  # by final state
    failures: dict[str, int] = field(default_factory=dict)  # by error code


async def depth(store: JobStore, queue: JobQueue) -> Depth:
    counts = await queue.counts()
    return Depth(await store.fresh_count(), counts["waiting"] + counts["prioritized"], counts["delayed"], counts["active"])


class QueueHistory:
    def __init__(self, store: JobStore, queue: JobQueue) -> None:
        self._redis = store.redis
        self._keys = store.keys
        self._store = store
        self._queue = queue

    async def sample(self) -> Depth:
        """Records the queue's depth in the current minute's bucket."""
        now = await depth(self._store, self._queue)
        key = self._keys.stats(int(time.time() * 1000) // MINUTE_MS)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={QUEUED: now.queued, RUNNING: now.active})
            pipe.expire(key, STATS_KEEP_S)
            await pipe.execute()
        return now

    async def last(self, minutes: int = 60) -> list[Minute]:
        """The last `minutes` minutes, oldest first, the current one included (sampled now)."""
        await self.sample()
        current = int(time.time() * 1000) // MINUTE_MS
        numbers = range(current - minutes + 1, current + 1)
        async with self._redis.pipeline(transaction=False) as pipe:
            for number in numbers:
                pipe.hgetall(self._keys.stats(number))
            buckets = cast(list[dict[str, str]], await pipe.execute())  # decode_responses (connections.py)
        return [_minute(number * MINUTE_MS, bucket) for number, bucket in zip(numbers, buckets, strict=True)]


def _minute(start_ms: int, bucket: dict[str, str]) -> Minute:
    minute = Minute(start_ms)
    for name, value in bucket.items():
        if name == QUEUED:
            minute.queued = int(value)
        elif name == RUNNING:
            minute.running = int(value)
        elif name.startswith(FAILED_PREFIX):
            minute.failures[name.removeprefix(FAILED_PREFIX)] = int(value)
        else:
            minute.ended[name] = int(value)
    return minute
