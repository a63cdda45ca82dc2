"""A schedule of chores in a Redis sorted set (member = what to do, score = when), shared safely by
every process that works through it: see lua/claim_due.lua."""

from __future__ import annotations

from redis.asyncio import Redis

from jobs.scripts import lua_script


class Schedule:
    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key
        self._claim_due = redis.register_script(lua_script("claim_due"))

    async def claim_due(self, now_ms: int, limit: int, lease_ms: int) -> list[str]:
        """Up to `limit` members due by `now_ms`, leased to the caller for `lease_ms`."""
        return await self._claim_due(keys=[self.key], args=[now_ms, limit, now_ms + lease_ms])

    async def done(self, members: list[str]) -> None:
        if members:
            await self.redis.zrem(self.key, *members)
