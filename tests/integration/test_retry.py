"""RetryDownload: a FAILED or CANCELLED job runs again under its own id, against real Redis,
SeaweedFS and workers."""

from __future__ import annotations

import random

import grpc
import pytest
from prometheus_client import REGISTRY

from devstack.seed import seed_sources
from jobs.connections import redis_client, s3_client_kwargs, s3_session
from jobs.keys import Keys
from jobs.storage import artifact_key
from jobs.tenants import tenant_slug
from longhaul.download.v1 import download_pb2 as pb
from tests import credentials
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.credentials import TENANT
from tests.helpers import check_archive, initiate, wait_done, wait_state, watch_all


async def retry(stub, job_id: str, metadata: tuple = (), **fields: object) -> pb.Job:
    return (await stub.RetryDownload(pb.RetryDownloadRequest(job_id=job_id, **fields), metadata=metadata)).job


async def refusal(stub, job_id: str, metadata: tuple = (), **fields: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await retry(stub, job_id, metadata, **fields)
    return error.value


async def test_a_failed_job_runs_again_under_its_own_id_and_its_history_goes_on(stack) -> None:
    s = stack.settings
    file_id = 90_000_000 + random.randrange(1_000_000)  # not in S3 yet
    failed = await wait_done(stack.stub, (await initiate(stack.stub, [file_id])).job_id)
    assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == pb.JOB_ERROR_CODE_ALL_FILES_MISSING

    async with s3_session().client("s3", **s3_client_kwargs(s)) as s3:
        await seed_sources(s3, s, [file_id])  # the file turns up
    retried_before = REGISTRY.get_sample_value("download_jobs_retried_on_request_total")
    queued = await retry(stack.stub, failed.job_id)
    assert REGISTRY.get_sample_value("download_jobs_retried_on_request_total") == retried_before + 1
    assert (queued.job_id, queued.state, queued.phase) == (failed.job_id, pb.JOB_STATE_QUEUED, pb.JOB_PHASE_QUEUED)
    assert (queued.attempts, queued.retries, queued.seq) == (0, 1, failed.seq + 1)
    assert not queued.HasField("error") and not queued.HasField("finish_time") and not queued.HasField("expire_time")
    assert list(queued.file_ids) == [file_id]

    # Live again: kept until it ends, in the quota, its artifact no longer due for deletion.
    keys, redis = Keys(s.redis_prefix), redis_client(s)
    try:
        assert await redis.ttl(keys.job(failed.job_id)) == -1
        assert not await redis.exists(keys.tombstone(failed.job_id))
        assert await redis.sismember(keys.active(tenant_slug(TENANT)), failed.job_id)
        artifact = artifact_key(s.redis_prefix, tenant_slug(TENANT), failed.job_id)
        assert await redis.zscore(keys.sweep, artifact) is None
    finally:
        await redis.aclose()

    # A watch resumed after the failure sees the retry, then the new run, seqs going on.
    messages = await watch_all(stack.stub, failed.job_id, after_seq=failed.seq)
    assert messages[0].type == pb.EVENT_TYPE_STATE_CHANGED and messages[0].job.state == pb.JOB_STATE_QUEUED
    assert [m.seq for m in messages] == list(range(failed.seq + 1, failed.seq + 1 + len(messages)))
    done = messages[-1].job
    assert (done.state, done.attempts, done.retries) == (pb.JOB_STATE_COMPLETED, 1, 1)
    assert not done.HasField("error"), "the last run's error no longer applies"
    check_archive(done, [file_id])


async def test_a_cancelled_job_retried_before_any_worker_took_it_runs_once(make_stack) -> None:
    stack = await make_stack(workers=0)
    job = await initiate(stack.stub, SMALL_IDS[:2])
    await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=job.job_id))
    # The cancelled job's queue entry is still waiting: the retry's enqueue finds it there.
    assert (await retry(stack.stub, job.job_id)).state == pb.JOB_STATE_QUEUED
    await stack.add_worker()
    done = await wait_done(stack.stub, job.job_id)
    assert (done.state, done.attempts) == (pb.JOB_STATE_COMPLETED, 1)
    check_archive(done, SMALL_IDS[:2])


async def test_a_job_retried_the_moment_it_failed_runs_at_once(make_stack) -> None:
    """Its last run's queue entry is still there for a moment after the failure is written; the
    retry's run has an entry of its own, so it does not wait for the reconciler (given an hour here)."""
    stack = await make_stack(enqueue_grace_s=3600)
    job = await initiate(stack.stub, MISSING_IDS)
    for retries in range(3):
        failed = await wait_done(stack.stub, job.job_id, timeout_s=10)
        assert (failed.state, failed.retries) == (pb.JOB_STATE_FAILED, retries)
        await retry(stack.stub, job.job_id)
    assert (await wait_done(stack.stub, job.job_id, timeout_s=10)).attempts == 1


async def test_only_failed_or_cancelled_jobs_can_be_retried_and_each_refusal_says_why(make_stack) -> None:
    stack = await make_stack(workers=0)
    job = await initiate(stack.stub, SMALL_IDS[:1])
    queued = await refusal(stack.stub, job.job_id)
    assert queued.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is QUEUED" in queued.details() and "WatchProgress" in queued.details()

    await stack.add_worker()
    await wait_done(stack.stub, job.job_id)
    completed = await refusal(stack.stub, job.job_id)
    assert completed.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is COMPLETED" in completed.details() and "GetStatus" in completed.details()
    assert (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job.retries == 0

    unknown = await refusal(stack.stub, "00000000-0000-4000-8000-000000000000")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND

    failed = await wait_done(stack.stub, (await initiate(stack.stub, MISSING_IDS)).job_id)
    theirs = await refusal(stack.stub, failed.job_id, credentials.bearer(credentials.OTHER_TOKEN))
    assert theirs.code() == grpc.StatusCode.NOT_FOUND, "another tenant's job is not found"

    malformed = await refusal(stack.stub, "job-1", request_id="not a key!")
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job_id" in malformed.details() and "request_id" in malformed.details()


async def test_an_expired_job_says_to_start_a_new_one(make_stack) -> None:
    stack = await make_stack(job_ttl_s=1)
    failed = await wait_done(stack.stub, (await initiate(stack.stub, MISSING_IDS)).job_id)
    await wait_state(stack.stub, failed.job_id, pb.JOB_STATE_EXPIRED)
    expired = await refusal(stack.stub, failed.job_id)
    assert expired.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "EXPIRED" in expired.details() and "InitiateDownload" in expired.details()


async def test_a_retry_repeated_with_its_request_id_retries_once(make_stack) -> None:
    stack = await make_stack(workers=0)
    job = await initiate(stack.stub, SMALL_IDS[:1])
    await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=job.job_id))
    once = await retry(stack.stub, job.job_id, request_id="retry-1")
    again = await retry(stack.stub, job.job_id, request_id="retry-1")
    assert (again.state, again.seq, again.retries) == (once.state, once.seq, 1)
    unkeyed = await refusal(stack.stub, job.job_id)
    assert unkeyed.code() == grpc.StatusCode.FAILED_PRECONDITION, "without its key it is a second retry"


async def test_a_retry_counts_against_the_active_jobs_quota(make_stack) -> None:
    stack = await make_stack(workers=0, tenant_max_active_jobs=1)
    first = await initiate(stack.stub, SMALL_IDS[:1])
    cancelled = (await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=first.job_id))).job
    second = await initiate(stack.stub, SMALL_IDS[1:2])

    refused = await refusal(stack.stub, first.job_id)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=first.job_id))).job
    assert (after.state, after.seq) == (pb.JOB_STATE_CANCELLED, cancelled.seq), "a refused retry changes nothing"

    await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=second.job_id))
    assert (await retry(stack.stub, first.job_id)).state == pb.JOB_STATE_QUEUED
