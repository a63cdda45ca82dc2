"""grpc.health.v1: SERVING while Redis answers, checked in the background.

Health is what load balancers act on, so it means "can serve calls". Every call needs Redis; none
needs S3 (presigning is local, and the workers fetch and upload), so S3 trouble is reported in the
checks (`/health`: "degraded") and met by the jobs' retries, and never takes the API out of rotation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from grpc_health.v1 import health, health_pb2
from redis.asyncio import Redis

from jobs import metrics
from jobs.settings import Settings

log = logging.getLogger(__name__)


class HealthMonitor:
    """Keeps the health service's status in step with the dependencies."""

    def __init__(
        self, settings: Settings, redis: Redis, s3: Any, services: list[str],
        pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.servicer = health.aio.HealthServicer()
        self.checks: dict[str, str] = {}
        self.healthy = False  # can serve calls (Redis answers)
        self.degraded = False  # serving, but a check failed (S3)
        self._settings = settings
        self._redis = redis
        self._s3 = s3
        self._services = ["", *services]
        self._task: asyncio.Task[None] | None = None
        self._pause = pause  # between checks; with Sentinel it also ends when a failover does

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Reports NOT_SERVING (so load balancers move away at once) and stops checking."""
        self.healthy = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for service in self._services:
            await self.servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def check(self) -> bool:
        results = await asyncio.gather(self._check_redis(), self._check_s3(), return_exceptions=True)
        self.checks = {
            name: "ok" if result is True else f"error: {result}"
            for name, result in zip(("redis", "storage"), results, strict=True)
        }
        healthy = self.healthy = results[0] is True
        metrics.DEPENDENCY_UP.labels("redis").set(healthy)
        metrics.DEPENDENCY_UP.labels("s3").set(results[1] is True)
        self.degraded = healthy and results[1] is not True
        status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in self._services:
            await self.servicer.set(service, status)
        if not healthy or self.degraded:
            log.warning("%s: %s", "degraded" if healthy else "unhealthy", self.checks)
        return healthy

    async def _check_redis(self) -> bool:
        return bool(await asyncio.wait_for(self._redis.ping(), 2))

    async def _check_s3(self) -> bool:
        for bucket in (self._settings.source_bucket, self._settings.artifact_bucket):
            await asyncio.wait_for(self._s3.head_bucket(Bucket=bucket), 2)
        return True

    async def _loop(self) -> None:
        while True:
            await self._pause(self._settings.health_check_interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("health check failed")
