"""The schedule of webhook deliveries in Redis: which jobs' endings are due to be announced, leased to
the worker process that tries one (a process that dies leaves it due again when its lease ends), and
each attempt's outcome recorded on the job (lua/webhook_attempt.lua)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from jobs.keys import Keys
from jobs.model import F, WebhookState
from jobs.schedule import Schedule
from jobs.scripts import lua_script

Fields = dict[str, str]
# Attempts a job's record keeps for its readers (Webhook.recent_attempts); the count goes on.
ATTEMPTS_KEPT = 10
MAX_ERROR_LEN = 200


@dataclass(frozen=True)
class Attempt:
    time_ms: int
    http_status: int = 0  # 0: no answer
    error: str = ""  # "" for a delivered one

    def to_json(self) -> str:
        return json.dumps([self.time_ms, self.http_status, self.error[:MAX_ERROR_LEN]])


class WebhookDeliveries:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._schedule = Schedule(redis, keys.webhooks)
        self._record = redis.register_script(lua_script("webhook_attempt"))

    async def take_due(self, now_ms: int, limit: int, lease_ms: int) -> list[str]:
        """Ids of up to `limit` jobs whose delivery is due, leased for `lease_ms`."""
        return await self._schedule.claim_due(now_ms, limit, lease_ms)

    async def job(self, job_id: str) -> Fields | None:
        """The job's record if its ending is still to be delivered; else None, and it leaves the
        schedule if its record is gone (forgotten or expired)."""
        record = cast(Fields, await self._redis.hgetall(self._keys.job(job_id)))
        if not record:
            await self._schedule.done([job_id])
            return None
        return record if record.get(F.HOOK_STATE) == WebhookState.SENDING else None

    async def record(self, job_id: str, hook_seq: str, attempt: Attempt, state: WebhookState, next_ms: int | None) -> bool:
        """Records one attempt; False when the ending it was for is no longer to be delivered."""
        args = [job_id, hook_seq, attempt.to_json(), state, "" if next_ms is None else next_ms, ATTEMPTS_KEPT]
        outcome = await self._record(keys=[self._keys.job(job_id), self._keys.webhooks], args=args)
        return bool(outcome == "ok")

    async def release(self, job_ids: list[str]) -> None:
        """Hands back leased deliveries that this process will not finish (it is stopping): due now,
        for another worker, rather than when the lease ends. Only members still scheduled."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.zadd(self._keys.webhooks, {job_id: 0}, xx=True)
            await pipe.execute()

    async def pending(self) -> int:
        """Endings due or waiting for a retry."""
        return int(await self._redis.zcard(self._keys.webhooks))
