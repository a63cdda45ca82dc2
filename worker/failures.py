"""Which failures are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import botocore.exceptions
import redis.exceptions
from botocore.exceptions import ClientError

from jobs.model import ErrorCode
from jobs.settings import Settings

_RETRYABLE_S3_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"})
_NETWORK_ERRORS = (
    botocore.exceptions.HTTPClientError,  # read timeouts, closed connections
    botocore.exceptions.ConnectionError,  # refused, connect timeouts
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)
_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def transient_code(error: BaseException) -> ErrorCode | None:
    """The error code of a failure a later attempt may not meet (S3 5xx, timeouts, resets, a Redis
    blip), or None for a failure that would happen again."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = error.response.get("Error", {}).get("Code", "")
        return ErrorCode.STORAGE_UNAVAILABLE if status >= 500 or status == 429 or code in _RETRYABLE_S3_CODES else None
    if isinstance(error, _REDIS_ERRORS):
        return ErrorCode.JOB_STORE_UNAVAILABLE
    if isinstance(error, _NETWORK_ERRORS):
        return ErrorCode.STORAGE_UNAVAILABLE
    return None


def retry_delay_ms(settings: Settings, attempt: int) -> int:
    """Exponential in the attempt number, with ±50 % jitter so retries of many jobs spread out."""
    base = min(settings.retry_base_ms * 2 ** max(attempt - 1, 0), settings.retry_max_ms)
    return int(base * random.uniform(0.5, 1.5))
