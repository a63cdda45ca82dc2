"""Longhaul's Python client: `AsyncClient` for asyncio code, `Client` for blocking code, and the
`longhaul` command line (longhaul_client.cli)."""

from longhaul_client.aio import DEFAULT_TARGET, TERMINAL_STATES, AsyncClient, Event
from longhaul_client.errors import (
    DeadlineExceeded,
    DownloadError,
    FailedPrecondition,
    InvalidArgument,
    JobCancelled,
    JobError,
    JobExpired,
    JobFailed,
    LonghaulError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from longhaul_client.sync import Client

__all__ = [
    "DEFAULT_TARGET",
    "TERMINAL_STATES",
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "DownloadError",
    "Event",
    "FailedPrecondition",
    "InvalidArgument",
    "JobCancelled",
    "JobError",
    "JobExpired",
    "JobFailed",
    "LonghaulError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]
