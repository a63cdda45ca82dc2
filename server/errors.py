"""The one place where failures become gRPC statuses (and, for the server's plain-HTTP side, HTTP ones).

Handlers raise domain errors (jobs.errors), validation errors or let infrastructure errors escape;
`grpc_errors` turns each into a status with a message a person can act on, and for invalid
arguments a google.rpc.BadRequest detail naming every bad field.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from botocore.exceptions import BotoCoreError, ClientError
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from redis.exceptions import RedisError

from jobs import tracing
from jobs.errors import (
    HistoryAhead,
    IdempotencyConflict,
    IntakePaused,
    JobAlreadyFinished,
    JobNotFound,
    JobNotRetryable,
    NotReplicated,
    QuotaExceeded,
    ReplicasUnavailable,
)
from server.auth import WWW_AUTHENTICATE, PermissionDenied, Unauthenticated
from server.callbacks import WebhooksNotConfigured
from server.caller import reply_headers
from server.ratelimit import RateLimited
from server.validation import InvalidRequest

log = logging.getLogger(__name__)


class MalformedRequest(Exception):
    """The request's bytes are not a valid protobuf message (see decoding.py)."""


class ServerShuttingDown(Exception):
    def __init__(self, last_seq: int) -> None:
        super().__init__(f"this server is shutting down; reconnect and resume with after_seq={last_seq}")


# When a tenant at its active-jobs limit should try again: jobs take tens of seconds, so sooner is
# mostly wasted; the client may also watch its running jobs and retry when one ends.
QUOTA_RETRY_S = 5

_DOMAIN_CODES: dict[type[Exception], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    MalformedRequest: grpc.StatusCode.INVALID_ARGUMENT,
    JobNotFound: grpc.StatusCode.NOT_FOUND,
    IdempotencyConflict: grpc.StatusCode.ALREADY_EXISTS,
    JobAlreadyFinished: grpc.StatusCode.FAILED_PRECONDITION,
    JobNotRetryable: grpc.StatusCode.FAILED_PRECONDITION,
    WebhooksNotConfigured: grpc.StatusCode.FAILED_PRECONDITION,
    HistoryAhead: grpc.StatusCode.OUT_OF_RANGE,
    ServerShuttingDown: grpc.StatusCode.UNAVAILABLE,
    NotReplicated: grpc.StatusCode.UNAVAILABLE,
    ReplicasUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(error: Exception) -> tuple[grpc.StatusCode, str, list[Any]]:
    """(code, message, rich details) for an exception raised by a handler."""
    if isinstance(error, InvalidRequest):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in error.violations
            ]
        )
        return grpc.StatusCode.INVALID_ARGUMENT, str(error), [detail]
    if isinstance(error, (RateLimited, QuotaExceeded, IntakePaused)):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(_retry_after_s(error) * 1000))
        code = grpc.StatusCode.UNAVAILABLE if isinstance(error, IntakePaused) else grpc.StatusCode.RESOURCE_EXHAUSTED
        return code, str(error), [error_details_pb2.RetryInfo(retry_delay=delay)]
    for kind, code in _DOMAIN_CODES.items():
        if isinstance(error, kind):
            return code, str(error), []
    if isinstance(error, RedisError):
        return grpc.StatusCode.UNAVAILABLE, "the job store (Redis) is unreachable; retry shortly", []
    if isinstance(error, (BotoCoreError, ClientError)):
        return grpc.StatusCode.UNAVAILABLE, "object storage (S3) is unreachable; retry shortly", []
    return grpc.StatusCode.INTERNAL, "internal error; it was logged", []


def _retry_after_s(error: RateLimited | QuotaExceeded | IntakePaused) -> float:
    return QUOTA_RETRY_S if isinstance(error, QuotaExceeded) else error.retry_after_s


def error_headers(error: Exception) -> tuple[tuple[str, str], ...]:
    """HTTP-minded metadata of an error; Envoy hands it to REST clients as headers."""
    if isinstance(error, RateLimited):
        return error.headers
    if isinstance(error, (QuotaExceeded, IntakePaused)):
        return (("retry-after", str(math.ceil(_retry_after_s(error)))),)
    if isinstance(error, Unauthenticated):
        return (("www-authenticate", WWW_AUTHENTICATE),)
    return ()


# google.rpc.Code -> HTTP status, as google/rpc/code.proto maps them (and Envoy's transcoder does).
HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def error_status(error: Exception, request_id: str = "") -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The status a handler's failure leaves with, details packed; unexpected ones are logged.

    `request_id` (the trace id when tracing is on, else Envoy's x-request-id) goes in a
    google.rpc.RequestInfo, so that a person reporting the error can name the request."""
    code, message, details = status_for(error)
    if code == grpc.StatusCode.INTERNAL:
        log.error("unexpected error in a handler", exc_info=error)
    if request_id:
        details = [*details, error_details_pb2.RequestInfo(request_id=request_id)]
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return code, status


def request_id(headers: Iterable[tuple[str, Any]]) -> str:
    """What names this request to support: its trace id (this server's span when tracing is on, else
    the traceparent the caller sent), else the x-request-id Envoy gives every request; "" for a
    direct call with neither."""
    if trace_id := tracing.current_trace_id():
        return trace_id
    sent = {k.lower(): str(v) for k, v in headers if k.lower() in ("traceparent", "x-request-id")}
    return tracing.trace_id_of(sent.get("traceparent", "")) or sent.get("x-request-id", "")


async def abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    code, status = error_status(error, request_id(context.invocation_metadata() or ()))
    metadata = (*reply_headers(), *error_headers(error), ("grpc-status-details-bin", status.SerializeToString()))
    await context.abort(code, status.message, trailing_metadata=metadata)


def grpc_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a unary or server-streaming handler so every failure leaves as a proper status."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if isinstance(request, MalformedRequest):
                    raise request
                async for message in handler(self, request, context):
                    yield message
            except Exception as error:  # noqa: BLE001 - every error is mapped in status_for
                await abort(context, error)

        return stream

    @functools.wraps(handler)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if isinstance(request, MalformedRequest):
                raise request
            return await handler(self, request, context)
        except Exception as error:  # noqa: BLE001 - every error is mapped in status_for
            await abort(context, error)

    return unary
