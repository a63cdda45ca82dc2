"""Requests per second per tenant, counted in Redis so the limit holds across server replicas.

A fixed one-second window: one script call (INCR, and EXPIRE on a new window) per call, one round
trip. A client can get up to twice the limit across a window boundary; that is the price of one
counter instead of a sliding log, and fine for a limit that protects the service rather than bills
anyone.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from jobs.keys import Keys
from jobs.tenants import tenant_slug


_COUNT = """
local count = redis.call("INCR", KEYS[1])
if count == 1 then redis.call("EXPIRE", KEYS[1], 2) end
return count
"""


@dataclass(frozen=True)
class Allowance:
    limit: int
    remaining: int
    reset_s: float  # until the window ends

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """IETF RateLimit header fields (draft 6), as the original HTTP service sent them."""
        return (
            ("ratelimit-limit", str(self.limit)),
            ("ratelimit-remaining", str(self.remaining)),
            ("ratelimit-reset", str(math.ceil(self.reset_s))),
            ("ratelimit-policy", f"{self.limit};w=1"),
        )


class RateLimited(Exception):
    def __init__(self, allowance: Allowance) -> None:
        super().__init__(
            f"too many requests: the limit is {allowance.limit} per second; retry in {math.ceil(allowance.reset_s)} s"
        )
        self.allowance = allowance
        self.retry_after_s = allowance.reset_s

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after", str(math.ceil(self.retry_after_s))), *self.allowance.headers)


class RateLimiter:
    def __init__(self, redis: Redis, keys: Keys, per_second: int) -> None:
        self._keys = keys
        self._limit = per_second
        self._count = redis.register_script(_COUNT)

    async def hit(self, tenant: str) -> Allowance | None:
        """Counts one request; raises RateLimited over the limit. None when there is no limit."""
        if not self._limit:
            return None
        now = time.time()
        second = int(now)
        count = await self._count(keys=[self._keys.rate(tenant_slug(tenant), second)])
        allowance = Allowance(self._limit, max(self._limit - count, 0), second + 1 - now)
        if count > self._limit:
            raise RateLimited(allowance)
        return allowance
