"""Bad input gets INVALID_ARGUMENT naming the field (google.rpc.BadRequest), and creates nothing."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from jobs.connections import redis_client
from jobs.keys import Keys
from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import SMALL_IDS


def bad_request(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The field violations of a rich INVALID_ARGUMENT status."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    raw = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    return {v.field: v.description for v in detail.field_violations}


@pytest.mark.parametrize(
    ("request_fields", "field", "phrase"),
    [
        ({"file_ids": []}, "file_ids", "at least one"),
        ({"file_ids": [100]}, "file_ids[0]", "out of range"),
        ({"file_ids": [9_999]}, "file_ids[0]", "from 10000 to 100000000"),
        ({"file_ids": [100_000_001]}, "file_ids[0]", "out of range"),
        ({"file_ids": [70000, -5]}, "file_ids[1]", "out of range"),
        ({"file_ids": list(range(10_000, 11_001))}, "file_ids", "at most 1000"),
        ({"file_ids": [70000, 70000]}, "file_ids[1]", "listed twice"),
        ({"file_ids": [70000], "request_id": "has spaces"}, "request_id", "letters, digits"),
        ({"file_ids": [70000], "request_id": "x" * 129}, "request_id", "up to 128"),
        ({"file_ids": [70000], "priority": 42}, "priority", "unknown priority"),
    ],
)
async def test_initiate_rejects(stack, request_fields, field, phrase) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.stub.InitiateDownload(pb.InitiateDownloadRequest(**request_fields))
    violations = bad_request(error.value)
    assert phrase in violations[field]
    assert field in error.value.details()
    # Nothing was created.
    listed = await stack.stub.ListDownloads(pb.ListDownloadsRequest())
    assert list(listed.jobs) == []


async def test_the_largest_valid_request_is_accepted(stack) -> None:
    ids = list(range(10_000, 11_000))
    reply = await stack.stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=ids, request_id="a.b:c-d_e"))
    assert reply.job.files_total == 1000


async def test_several_violations_are_all_named(stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=[1, 70000, 2], request_id="no spaces!"))
    assert set(bad_request(error.value)) == {"file_ids[0]", "file_ids[2]", "request_id"}


@pytest.mark.parametrize("job_id", ["", "nope", "7C65AFA7-2378-44EA-BF71-1A4BE622D5D2", "../../etc", "x" * 5000])
async def test_malformed_job_ids_are_rejected_before_touching_redis(stack, job_id) -> None:
    calls = [
        stack.stub.GetStatus(pb.GetStatusRequest(job_id=job_id)),
        stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=job_id)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert "job_id" in bad_request(error.value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stack.stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id)):
            pass
    assert "job_id" in bad_request(error.value)
    assert len(str(error.value.details())) < 300, "a huge input is not echoed back whole"


async def test_negative_after_seq_is_rejected(stack) -> None:
    job = (await stack.stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=SMALL_IDS[:1]))).job
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stack.stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id, after_seq=-1)):
            pass
    assert "after_seq" in bad_request(error.value)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [({"page_size": -1}, "page_size"), ({"page_size": 1001}, "page_size"), ({"page_token": "garbage"}, "page_token")],
)
async def test_list_rejects_bad_paging(stack, request_fields, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.stub.ListDownloads(pb.ListDownloadsRequest(**request_fields))
    assert field in bad_request(error.value)


@pytest.mark.parametrize("file_id", [0, 9_999, 100_000_001])
async def test_check_availability_rejects_out_of_range_ids(stack, file_id) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.stub.CheckAvailability(pb.CheckAvailabilityRequest(file_id=file_id))
    assert "file_id" in bad_request(error.value)


async def test_rejected_requests_leave_no_keys_in_redis(stack, settings) -> None:
    for fields in ({"file_ids": []}, {"file_ids": [100]}, {"file_ids": [70000], "request_id": "bad id"}):
        with pytest.raises(grpc.aio.AioRpcError):
            await stack.stub.InitiateDownload(pb.InitiateDownloadRequest(**fields))
    redis = redis_client(settings)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{settings.redis_prefix}:*")]
    finally:
        await redis.aclose()
    # What the workers keep whatever the requests: bullmq's keys and the registry of workers alive.
    registry = (Keys(settings.redis_prefix).workers, Keys(settings.redis_prefix).workers_running)
    assert [k for k in keys if ":q:" not in k and k not in registry] == []
