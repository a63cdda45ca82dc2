"""Requests per second per tenant, counted in Redis so the limit holds across server replicas.

A fixed one-second window per tenant: a counter in Redis. A client can get up to twice the limit
across a window boundary; that is the price of one counter instead of a sliding log, and fine for a
limit that protects the service rather than bills anyone.

Each server takes the window's calls from Redis in leases of `limit / 20` (at least 1, at most 100)
and hands them out locally, so a tenant costs a server at most about 20 Redis round trips per second
whatever its limit, instead of one per call. The sum of the leases never exceeds the limit, so the
limit holds across replicas; the cost is that a lease left unused at the end of a window is lost, so
a tenant may be refused up to (lease - 1) calls per server early. Small limits (under 40/s) lease one
call at a time: exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from jobs import metrics
from jobs.keys import Keys
from jobs.multiplex import MultiplexedRedis
from jobs.settings import Settings
from jobs.tenants import tenant_slug

# KEYS: the window's counter; ARGV: the lease. Returns the counter after it.
_LEASE = """
local count = redis.call("INCRBY", KEYS[1], ARGV[1])
if count == tonumber(ARGV[1]) then redis.call("EXPIRE", KEYS[1], 2) end
return count
"""
_MAX_LEASE = 100
# Windows kept in memory before the stale ones (past seconds) are dropped.
_MAX_WINDOWS = 10_000


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


@dataclass
class _Window:
    """One tenant's current second, as this server sees it."""

    second: int
    leased: int = 0  # calls leased from Redis and not yet used
    count: int = 0  # the window's counter in Redis at this server's last lease
    spent: bool = False  # the limit was reached: refuse the rest of the second without asking Redis


class RateLimiter:
    def __init__(
        self,
        redis: Redis | MultiplexedRedis,
        keys: Keys,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Windows are wall-clock seconds, shared by every replica through the key name; tests pass a clock.
        self._clock = clock
        self._keys = keys
        self._settings = settings
        self._lease = redis.register_script(_LEASE)
        self._windows: dict[str, _Window] = {}

    async def hit(self, tenant: str) -> Allowance | None:
        """Counts one request; raises RateLimited over the limit. None when there is no limit."""
        limit = self._settings.limits_for(tenant)[1]
        if not limit:
            return None
        lease_size = max(1, min(limit // 20, _MAX_LEASE))
        now = self._clock()
        second = int(now)
        window = self._windows.get(tenant)
        if window is None or window.second != second:
            if len(self._windows) >= _MAX_WINDOWS:
                self._windows = {t: w for t, w in self._windows.items() if w.second == second}
            window = self._windows[tenant] = _Window(second)
        if window.spent:
            raise self._refuse(Allowance(limit, 0, second + 1 - now))
        if not window.leased:
            key = self._keys.rate(tenant_slug(tenant), second)
            count = await self._lease(keys=[key], args=[lease_size])
            window.count = max(window.count, count)
            window.leased += max(0, min(lease_size, limit - (count - lease_size)))
            if not window.leased:
                window.spent = True
                raise self._refuse(Allowance(limit, 0, second + 1 - now))
        window.leased -= 1
        remaining = max(limit - window.count, 0) + window.leased
        return Allowance(limit, remaining, second + 1 - now)

    @staticmethod
    def _refuse(allowance: Allowance) -> RateLimited:
        metrics.REFUSED.labels("rate_limit").inc()
        return RateLimited(allowance)
