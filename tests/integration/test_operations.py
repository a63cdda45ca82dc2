"""google.longrunning.Operations over the jobs, driven by google-api-core's generic LRO client, as
any Google-style client would drive it."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.api_core import exceptions, operation, operations_v1
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2

from jobs.connections import redis_client
from jobs.keys import Keys
from jobs.storage import artifact_key
from jobs.store import now_ms
from jobs.tenants import tenant_slug
from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.credentials import TENANT, sync_channel
from tests.helpers import check_archive, initiate, wait_done

SLOW = {"delay_min_ms": 3_000, "delay_max_ms": 3_000}


@pytest.fixture
async def ops(stack):
    return operations_pb2_grpc.OperationsStub(stack.channel)


def drive_to_completion(address: str, job_id: str) -> tuple[pb.DownloadResult, pb.Job, list[str]]:
    """What a generic LRO client does: wrap the operation, poll it to its result."""
    with sync_channel(address) as channel:
        client = operations_v1.OperationsClient(channel)
        future = operation.from_gapic(
            client.get_operation(f"operations/{job_id}"), client, pb.DownloadResult, metadata_type=pb.Job
        )
        result = future.result(timeout=30)
        listed = [op.name for op in client.list_operations("operations", "")]
        return result, future.metadata, listed


async def test_google_api_core_drives_a_job_to_its_result(stack) -> None:
    job = await initiate(stack.stub, SMALL_IDS[:3])
    result, metadata, listed = await asyncio.to_thread(drive_to_completion, stack.address, job.job_id)
    assert metadata.job_id == job.job_id and metadata.state == pb.JOB_STATE_COMPLETED and metadata.percent == 100
    assert f"operations/{job.job_id}" in listed
    done = (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job
    assert result.sha256 == done.result.sha256
    check_archive(done, SMALL_IDS[:3])


def cancel_through_lro(address: str, job_id: str) -> operation.Operation:
    with sync_channel(address) as channel:
        client = operations_v1.OperationsClient(channel)
        future = operation.from_gapic(client.get_operation(f"operations/{job_id}"), client, pb.DownloadResult)
        assert future.cancel()
        assert future.cancelled()
        with pytest.raises(exceptions.Cancelled):
            future.result(timeout=10)
        return future


async def test_cancel_operation_cancels_the_job(make_stack) -> None:
    stack = await make_stack(**SLOW)
    job = await initiate(stack.stub, SMALL_IDS[:2])
    await asyncio.to_thread(cancel_through_lro, stack.address, job.job_id)
    assert (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job.state == pb.JOB_STATE_CANCELLED


async def test_a_failed_job_is_an_operation_error_with_its_reason(stack, ops) -> None:
    job = await initiate(stack.stub, MISSING_IDS)
    await wait_done(stack.stub, job.job_id)
    op = await ops.GetOperation(operations_pb2.GetOperationRequest(name=f"operations/{job.job_id}"))
    assert op.done and not op.HasField("response")
    assert op.error.code == code_pb2.NOT_FOUND and "none of the 2 requested files exist" in op.error.message
    info = error_details_pb2.ErrorInfo()
    assert op.error.details[0].Unpack(info) and info.reason == "ALL_FILES_MISSING"
    assert info.metadata["retryable"] == "false"


async def test_wait_operation_returns_when_the_job_ends_or_the_wait_runs_out(make_stack) -> None:
    stack = await make_stack(**SLOW)
    ops = operations_pb2_grpc.OperationsStub(stack.channel)
    job = await initiate(stack.stub, SMALL_IDS[:2])
    name = f"operations/{job.job_id}"
    short = await ops.WaitOperation(
        operations_pb2.WaitOperationRequest(name=name, timeout=duration_pb2.Duration(nanos=300_000_000))
    )
    assert not short.done, "the wait ran out first"
    done = await ops.WaitOperation(operations_pb2.WaitOperationRequest(name=name, timeout=duration_pb2.Duration(seconds=20)))
    assert done.done and done.HasField("response")


async def test_delete_operation_forgets_the_job_and_its_artifact(stack, ops) -> None:
    job = await initiate(stack.stub, SMALL_IDS[:1], request_id="forget-me")
    await wait_done(stack.stub, job.job_id)
    name = f"operations/{job.job_id}"
    await ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=name))
    for call in (
        ops.GetOperation(operations_pb2.GetOperationRequest(name=name)),
        ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=name)),
        stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await ops.ListOperations(operations_pb2.ListOperationsRequest(name="operations"))
    assert name not in [op.name for op in listed.operations]
    again = await initiate(stack.stub, SMALL_IDS[:1], request_id="forget-me")
    assert again.job_id != job.job_id, "the idempotency key went with the job"
    async with redis_client(stack.settings) as redis:
        sweep = Keys(stack.settings.redis_prefix).sweep
        assert (
            await redis.zscore(sweep, artifact_key(stack.settings.redis_prefix, tenant_slug(TENANT), job.job_id)) <= now_ms()
        ), "its artifact goes at once"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (operations_pb2.GetOperationRequest(name="jobs/x"), "name"),
        (operations_pb2.GetOperationRequest(name="operations/not-a-uuid"), "name"),
        (operations_pb2.ListOperationsRequest(name="operations", filter="done=true"), "filter"),
        (
            operations_pb2.WaitOperationRequest(name=f"operations/{uuid.uuid4()}", timeout=duration_pb2.Duration(seconds=-1)),
            "timeout",
        ),
    ],
)
async def test_bad_operation_requests_name_the_field(ops, request_, field: str) -> None:
    method = {
        operations_pb2.GetOperationRequest: ops.GetOperation,
        operations_pb2.ListOperationsRequest: ops.ListOperations,
        operations_pb2.WaitOperationRequest: ops.WaitOperation,
    }[type(request_)]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await method(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}:")
