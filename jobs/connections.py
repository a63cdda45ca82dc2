"""Connections to Redis and S3, configured the same way by the server and the worker."""

from __future__ import annotations

import functools
from typing import Any

import aioboto3
import botocore.session
from botocore.config import Config
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from jobs.multiplex import MultiplexedRedis
from jobs.settings import Settings

# Blocking queue reads wait up to 10 s; a shorter socket timeout turns every idle wait into an
# error and a reconnect (seen as 5 s job-start delays with redis-py's defaults).
_SOCKET_TIMEOUT_S = 30


# Connections one process opens to Redis at most (a command holds one for about 0.1 ms, so 8
# serve thousands of calls a second). Beyond that a command waits for a free connection
# (up to the socket timeout) instead of failing: redis-py's default pool raises "Too many
# connections" at 100 commands in flight, which a burst of watchers opening at once reaches.
_MAX_CONNECTIONS = 8


def redis_client(settings: Settings, **overrides: Any) -> Redis:
    """A pooled client that retries a command through short Redis blips."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": _SOCKET_TIMEOUT_S,
        "socket_connect_timeout": 5,
        "retry": Retry(ExponentialBackoff(cap=2, base=0.05), retries=5),
        "retry_on_error": [BusyLoadingError, ConnectionError, TimeoutError],
        "health_check_interval": 30,
    }
    options.update(overrides)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=_MAX_CONNECTIONS, timeout=_SOCKET_TIMEOUT_S, **options
    )
    return Redis.from_pool(pool)  # closing the client closes the pool


def multiplexed_redis(settings: Settings) -> MultiplexedRedis:
    """One connection for the per-call commands of a busy process (multiplex.py says why)."""
    return MultiplexedRedis(settings.redis_url, timeout_s=_SOCKET_TIMEOUT_S)


def bullmq_connection(settings: Settings) -> dict[str, Any]:
    """Connection options for bullmq, which builds its own clients (one of them blocking)."""
    options = parse_url(settings.redis_url)
    options["socket_timeout"] = _SOCKET_TIMEOUT_S
    return options


@functools.cache
def s3_session() -> aioboto3.Session:
    """One per process: each new session reloads botocore's service models (~0.2 s)."""
    return aioboto3.Session()


@functools.cache
def botocore_session() -> botocore.session.Session:
    """For local-only work such as presigning, where an async client buys nothing."""
    return botocore.session.get_session()


def s3_client_kwargs(settings: Settings, endpoint: str | None = None) -> dict[str, Any]:
    """Arguments for `session.client("s3", ...)`; path-style addressing works with any S3 server."""
    return {
        "endpoint_url": endpoint or settings.s3_endpoint,
        "region_name": settings.s3_region,
        "aws_access_key_id": settings.s3_access_key_id,
        "aws_secret_access_key": settings.s3_secret_access_key,
        "config": Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=64,
        ),
    }
