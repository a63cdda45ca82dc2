"""One exception family for everything the client raises; each carries a gRPC status code."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from longhaul.download.v1 import download_pb2 as pb


class LonghaulError(Exception):
    """Base of every client error. `code` is the gRPC status code of the failure."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # Filled from google.rpc details when the server sent them.
        self.field_violations: list[tuple[str, str]] = []
        self.retry_after_s: float | None = None
        # What names the request to the service's operators: its trace id, or Envoy's request id.
        self.request_id = ""

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        return f"{text} [request id {self.request_id}]" if self.request_id else text


class InvalidArgument(LonghaulError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(LonghaulError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(LonghaulError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(LonghaulError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(LonghaulError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(LonghaulError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(LonghaulError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(LonghaulError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class JobError(LonghaulError):
    """The job ended without a result. `job` is its final state (`job.error` says why, if it failed)."""

    def __init__(self, job: pb.Job, message: str) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(JobError):
    code = grpc.StatusCode.ABORTED


class JobCancelled(JobError):
    code = grpc.StatusCode.CANCELLED


class JobExpired(JobError):
    code = grpc.StatusCode.NOT_FOUND


class DownloadError(LonghaulError):
    """Fetching the finished archive failed (HTTP error, or the bytes did not match the SHA-256)."""

    code = grpc.StatusCode.DATA_LOSS


_BY_CODE: dict[grpc.StatusCode, type[LonghaulError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted, Unauthenticated, PermissionDenied,
        Unavailable, DeadlineExceeded,
    )
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> LonghaulError:
    code = error.code()
    result = _BY_CODE.get(code, LonghaulError)(error.details() or code.name, code)
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            _add_details(result, status_pb2.Status.FromString(value))
    return result


def from_status(status: Any) -> LonghaulError:
    """From a google.rpc.Status (an EVENT_TYPE_ERROR event's `error`)."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    result = _BY_CODE.get(code, LonghaulError)(status.message or code.name, code)
    _add_details(result, status)
    return result


def _add_details(error: LonghaulError, status: status_pb2.Status) -> None:
    for detail in status.details:
        bad_request, retry = error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
        info = error_details_pb2.RequestInfo()
        if detail.Unpack(bad_request):
            error.field_violations = [(v.field, v.description) for v in bad_request.field_violations]
        elif detail.Unpack(retry):
            error.retry_after_s = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Unpack(info):
            error.request_id = info.request_id


def error_code(job: pb.Job) -> str:
    """The job's error code as people read it (ALL_FILES_MISSING); "" when it has none."""
    if not job.error.code:
        return ""
    name = pb.JobErrorCode.Name(job.error.code) if job.error.code in pb.JobErrorCode.values() else str(job.error.code)
    return name.removeprefix("JOB_ERROR_CODE_")


def job_error(job: pb.Job) -> JobError | None:
    """The error `wait()` raises for a job that ended without a result, or None if it completed."""
    if job.state == pb.JOB_STATE_FAILED:
        reason = f"{error_code(job)}: {job.error.message}" if job.error.code else job.message
        return JobFailed(job, f"job {job.job_id} failed: {reason}")
    if job.state == pb.JOB_STATE_CANCELLED:
        return JobCancelled(job, f"job {job.job_id} was cancelled")
    if job.state == pb.JOB_STATE_EXPIRED:
        return JobExpired(job, f"job {job.job_id} has expired; its result is gone")
    return None
