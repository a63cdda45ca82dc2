"""google.longrunning.Operations over the same jobs, so generic long-running-operation tooling
(google-api-core's `operation.from_gapic`, gcloud-style pollers) works unchanged.

An operation is `operations/{job_id}`; its metadata is the Job (progress), its response the
DownloadResult, its error a google.rpc.Status whose ErrorInfo reason is the job's error code.
DeleteOperation forgets a job; it does not cancel it (CancelOperation does).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from jobs.convert import Presigner, to_job
from jobs.store import Fields, JobStore
from longhaul.download.v1 import download_pb2 as pb
from server import validation
from server.caller import tenant
from server.errors import grpc_errors
from server.records import RecordCache, StoredRecords
from server.watch import WatchHub, follow

SERVICE_NAME = operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name
ERROR_DOMAIN = "longhaul.download.v1"

# The status of a job that ended without a result. A failure's code says what a caller can do.
_FAILURE_CODES = {
    pb.JOB_ERROR_CODE_ALL_FILES_MISSING: code_pb2.NOT_FOUND,
    pb.JOB_ERROR_CODE_ATTEMPT_TIMEOUT: code_pb2.DEADLINE_EXCEEDED,
    pb.JOB_ERROR_CODE_INTERNAL: code_pb2.INTERNAL,
}


def error_reason(code: int) -> str:
    """JOB_ERROR_CODE_ALL_FILES_MISSING -> ALL_FILES_MISSING, as ErrorInfo reasons are written."""
    return "FAILED" if code == pb.JOB_ERROR_CODE_UNSPECIFIED else pb.JobErrorCode.Name(code).removeprefix("JOB_ERROR_CODE_")


def _failure(job: pb.Job) -> status_pb2.Status:
    if job.state == pb.JOB_STATE_CANCELLED:
        return status_pb2.Status(code=code_pb2.CANCELLED, message=job.message or "cancelled on request")
    if job.state == pb.JOB_STATE_EXPIRED:
        return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="the job's retention has passed; its result is gone")
    default = code_pb2.UNAVAILABLE if job.error.retryable else code_pb2.ABORTED
    status = status_pb2.Status(code=_FAILURE_CODES.get(job.error.code, default), message=job.error.message or job.message)
    info = error_details_pb2.ErrorInfo(
        reason=error_reason(job.error.code), domain=ERROR_DOMAIN, metadata={"retryable": str(job.error.retryable).lower()}
    )
    status.details.add().Pack(info)
    return status


def to_operation(fields: Fields, presigner: Presigner) -> operations_pb2.Operation:
    job = to_job(fields, presigner)
    operation = operations_pb2.Operation(name=f"{validation.OPERATIONS_COLLECTION}/{job.job_id}")
    operation.metadata.Pack(job)
    if job.state == pb.JOB_STATE_COMPLETED:
        operation.done = True
        operation.response.Pack(job.result)
    elif job.state in (pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED, pb.JOB_STATE_EXPIRED):
        operation.done = True
        operation.error.CopyFrom(_failure(job))
    return operation


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    def __init__(
        self, store: JobStore, records: RecordCache | StoredRecords, hub: WatchHub, presigner: Presigner, heartbeat_s: float
    ) -> None:
        self._store = store
        self._records = records
        self._hub = hub
        self._presigner = presigner
        self._heartbeat_s = heartbeat_s

    @grpc_errors
    async def GetOperation(self, request: operations_pb2.GetOperationRequest, context: Any) -> operations_pb2.Operation:
        fields = await self._records.get(validation.operation_name(request.name), tenant())
        return to_operation(fields, self._presigner)

    @grpc_errors
    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Any
    ) -> operations_pb2.ListOperationsResponse:
        validation.operations_collection(request.name, request.filter)
        page_size, page_token = validation.page(request)
        jobs, next_token = await self._store.list(tenant(), page_size, page_token)
        return operations_pb2.ListOperationsResponse(
            operations=[to_operation(fields, self._presigner) for fields in jobs], next_page_token=next_token
        )

    @grpc_errors
    async def CancelOperation(self, request: operations_pb2.CancelOperationRequest, context: Any) -> empty_pb2.Empty:
        await self._store.cancel(validation.operation_name(request.name), tenant())
        return empty_pb2.Empty()

    @grpc_errors
    async def DeleteOperation(self, request: operations_pb2.DeleteOperationRequest, context: Any) -> empty_pb2.Empty:
        await self._store.forget(validation.operation_name(request.name), tenant())
        return empty_pb2.Empty()

    @grpc_errors
    async def WaitOperation(self, request: operations_pb2.WaitOperationRequest, context: Any) -> operations_pb2.Operation:
        job_id = validation.operation_name(request.name)
        wait_s = validation.wait_timeout(request.HasField("timeout"), request.timeout.ToTimedelta().total_seconds())
        remaining = context.time_remaining()
        if remaining is not None:
            wait_s = min(wait_s, max(remaining - 0.5, 0))  # answer before the caller's own deadline
        try:
            async with asyncio.timeout(wait_s):
                async for _ in follow(self._store, self._hub, job_id, tenant(), 0, self._heartbeat_s):
                    pass  # follow() returns once the job has ended
        except TimeoutError:
            pass
        return to_operation(await self._store.get(job_id, tenant()), self._presigner)


def add_to_server(servicer: OperationsServicer, server: grpc.aio.Server) -> None:
    operations_pb2_grpc.add_OperationsServicer_to_server(servicer, server)
