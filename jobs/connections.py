"""Connections to Redis and S3, configured the same way by the server and the worker."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, runtime_checkable

import aioboto3
import botocore.session
from botocore.config import Config
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from jobs.failover import FailoverWatch, FollowingConnection, FollowingSSLConnection, Sentinels
from jobs.multiplex import Address, MultiplexedRedis
from jobs.settings import ConfigError, Settings

# Blocking queue reads wait up to 10 s; a shorter socket timeout turns every idle wait into an
# error and a reconnect (seen as 5 s job-start delays with redis-py's defaults).
_SOCKET_TIMEOUT_S = 30


# Connections one process opens to Redis at most (a command holds one for about 0.1 ms, so 8
# serve thousands of calls a second). Beyond that a command waits for a free connection
# (up to the socket timeout) instead of failing: redis-py's default pool raises "Too many
# connections" at 100 commands in flight, which a burst of watchers opening at once reaches.
_MAX_CONNECTIONS = 8


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (each connection asks the sentinels where the primary is, and drops
    when a failover turns it into a replica) with the blocking pool's bound on connections."""


def redis_client(settings: Settings, **overrides: Any) -> Redis:
    """A pooled client that retries a command through short Redis blips (and failovers)."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": _SOCKET_TIMEOUT_S,
        "socket_connect_timeout": 5,
        **_retrying(retries=5),
        "health_check_interval": 30,
    }
    options.update(overrides)
    pool: BlockingConnectionPool
    if settings.sentinel_addresses:
        pool = _SentinelBlockingPool(
            settings.redis_sentinel_master, sentinel(settings), max_connections=_MAX_CONNECTIONS,
            timeout=_SOCKET_TIMEOUT_S, **_data_node_options(settings), **options,
        )
    else:
        pool = BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=_MAX_CONNECTIONS, timeout=_SOCKET_TIMEOUT_S, **options
        )
    return Redis.from_pool(pool)  # closing the client closes the pool


def multiplexed_redis(settings: Settings, setup: Callable[[Address], list[tuple[Any, ...]]] | None = None) -> MultiplexedRedis:
    """One connection for the per-call commands of a busy process (multiplex.py says why)."""
    locate = None
    if settings.sentinel_addresses:
        locate = functools.partial(sentinel(settings).discover_master, settings.redis_sentinel_master)
    return MultiplexedRedis(settings.redis_url, timeout_s=_SOCKET_TIMEOUT_S, setup=setup, locate=locate, pause=pause(settings))


def pause(settings: Settings) -> Callable[[float], Awaitable[None]]:
    """How to wait before trying Redis again: asyncio.sleep, or with Sentinel one that also ends
    when a failover does (a command is sent again at once, not after the rest of a backoff)."""
    return sentinel(settings).pause if settings.sentinel_addresses else asyncio.sleep


def bullmq_connection(settings: Settings) -> dict[str, Any]:
    """Connection options for bullmq, which builds its own clients (one of them blocking)."""
    if settings.sentinel_addresses:
        # bullmq makes a single-connection client of each; they all take theirs from this pool.
        # Their retries are the pool's: bullmq's own back off to 20 s, too slow to follow a failover.
        pool = SentinelConnectionPool(
            settings.redis_sentinel_master, sentinel(settings), decode_responses=True,
            socket_timeout=_SOCKET_TIMEOUT_S, **_retrying(retries=20), **_data_node_options(settings),
        )
        return {"connection_pool": pool}
    options = parse_url(settings.redis_url)
    options["socket_timeout"] = _SOCKET_TIMEOUT_S
    return options


def _retrying(retries: int) -> dict[str, Any]:
    """Retries after 0.1, 0.2, 0.4 … 2 s, 2 s …: through a blip, a restart or a failover."""
    return {
        "retry": Retry(ExponentialBackoff(cap=2, base=0.05), retries=retries),
        "retry_on_error": [BusyLoadingError, ConnectionError, TimeoutError],
    }


@runtime_checkable
class Reconnects(Protocol):
    """A client of our own that can drop its connection (MultiplexedRedis, the record cache)."""

    def reconnect(self) -> None: ...


def watch_failovers(settings: Settings, *clients: Reconnects | Redis | ConnectionPool | None) -> FailoverWatch | None:
    """With Redis behind Sentinel, a started FailoverWatch that moves these clients to each new
    primary (the caller closes it); None otherwise."""
    if not settings.sentinel_addresses:
        return None
    watch = FailoverWatch(settings, sentinel(settings), _leaving_old_primary(*clients))
    watch.start()
    return watch


def _leaving_old_primary(*clients: Reconnects | Redis | ConnectionPool | None) -> Callable[[], Awaitable[None]]:
    """What drops every connection of these clients, so that each reconnects to the new primary
    (the commands in flight fail over with them, as on any lost connection)."""

    async def leave() -> None:
        for client in clients:
            if isinstance(client, Reconnects):
                client.reconnect()
                continue
            pool = client.connection_pool if isinstance(client, Redis) else client
            if pool is not None:
                # Those in use too: bullmq's clients each hold one connection for good.
                await pool.disconnect(inuse_connections=True)

    return leave


@functools.cache
def sentinel(settings: Settings) -> Sentinels:
    """The sentinels of REDIS_SENTINELS, one object for every client of the process, so that a
    failover under way (failover.py) holds all of them back. (Its connections belong to the event
    loop that first uses them: a process runs one.)"""
    return Sentinels(settings)


def _data_node_options(settings: Settings) -> dict[str, Any]:
    """REDIS_URL's database, credentials and TLS, for connections whose address Sentinel gives."""
    options = parse_url(settings.redis_url)
    kind = options.pop("connection_class", None)
    if kind is UnixDomainSocketConnection:
        raise ConfigError("REDIS_SENTINELS: REDIS_URL must be redis:// or rediss://, not a unix socket")
    options.pop("host", None)
    options.pop("port", None)
    return options | {"connection_class": FollowingSSLConnection if kind is SSLConnection else FollowingConnection}


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
    url = endpoint or settings.s3_endpoint
    # One check of every body, not two. Over plain HTTP, SigV4 signs each body's SHA-256, which S3
    # verifies; botocore's CRC32 of each part (and of each download) on top cost the worker about a
    # tenth of its archive rate. Over HTTPS bodies are not signed, and the CRC32 is that check.
    checksums: Literal["when_required", "when_supported"] = "when_required" if url.startswith("http://") else "when_supported"
    return {
        "endpoint_url": url,
        "region_name": settings.s3_region,
        "aws_access_key_id": settings.s3_access_key_id,
        "aws_secret_access_key": settings.s3_secret_access_key,
        "config": Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=64,
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
        ),
    }
