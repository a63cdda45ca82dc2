"""The operator API (AdminService) against a real server, workers, Redis and SeaweedFS: who may call
it, the queue and its workers, the dead letters, and pausing intake."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import jwt
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from longhaul.admin.v1 import admin_pb2 as apb
from longhaul.admin.v1 import admin_pb2_grpc as apb_grpc
from longhaul.download.v1 import download_pb2 as pb
from tests import credentials
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.helpers import initiate, wait_done, wait_state

OPERATOR = credentials.bearer(credentials.OPERATOR_TOKEN)
HS_SECRET, ISSUER, AUDIENCE = "a secret the operators' JWTs are signed with", "https://issuer.test", "longhaul"


def admin(stack) -> apb_grpc.AdminServiceStub:
    return apb_grpc.AdminServiceStub(stack.channel)


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def dead_letters(stack, **filter_fields: object) -> list[apb.JobEntry]:
    request = apb.ListDeadLettersRequest(filter=apb.DeadLetterFilter(**filter_fields), page_size=1000)
    return list((await admin(stack).ListDeadLetters(request, metadata=OPERATOR)).dead_letters)


async def failed_jobs(stack, count: int, metadata: tuple = ()) -> list[pb.Job]:
    """Jobs that failed one after the other."""
    return [
        await wait_done(stack.stub, (await initiate(stack.stub, MISSING_IDS, metadata=metadata)).job_id, metadata=metadata)
        for _ in range(count)
    ]


async def test_only_operators_may_call_it_and_operators_start_no_downloads(make_stack) -> None:
    stack = await make_stack(workers=0, jwt_hs256_secret=HS_SECRET, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    stats = apb.GetQueueStatsRequest()

    by_tenant = await refused(admin(stack).GetQueueStats(stats))  # the channel's tenant key
    assert by_tenant.code() == grpc.StatusCode.PERMISSION_DENIED and "create-operator" in by_tenant.details()
    nobody = await refused(admin(stack).GetQueueStats(stats, metadata=(("authorization", ""),)))
    assert nobody.code() == grpc.StatusCode.UNAUTHENTICATED

    operator = await refused(stack.stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=SMALL_IDS[:1]), metadata=OPERATOR))
    assert operator.code() == grpc.StatusCode.PERMISSION_DENIED and "no tenant" in operator.details()

    def token(**claims: object) -> tuple[tuple[str, str], ...]:
        body = {"sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300} | claims
        return credentials.bearer(jwt.encode(body, HS_SECRET, algorithm="HS256"))

    assert await admin(stack).GetQueueStats(stats, metadata=token(roles=["reader", "longhaul:operator"]))
    assert await admin(stack).GetQueueStats(stats, metadata=token(roles="reader longhaul:operator"))
    without_role = await refused(admin(stack).GetQueueStats(stats, metadata=token(roles=["reader"])))
    assert without_role.code() == grpc.StatusCode.PERMISSION_DENIED and "operator role" in without_role.details()


async def test_queue_stats_count_where_jobs_wait_and_show_what_each_worker_runs(make_stack) -> None:
    stack = await make_stack(workers=0, delay_min_ms=5_000, delay_max_ms=5_000)
    jobs = [await initiate(stack.stub, SMALL_IDS[:1]) for _ in range(3)]
    stats = await admin(stack).GetQueueStats(apb.GetQueueStatsRequest(), metadata=OPERATOR)
    assert (stats.fresh, stats.live, stats.active, len(stats.workers)) == (3, 3, 0, 0), "no worker: all wait for a relay"

    await stack.add_worker(worker_concurrency=1)
    await wait_state(stack.stub, jobs[0].job_id, pb.JOB_STATE_RUNNING)
    deadline = time.monotonic() + 10
    while True:  # the worker reports what it runs as soon as that changes
        stats = await admin(stack).GetQueueStats(apb.GetQueueStatsRequest(), metadata=OPERATOR)
        if stats.workers and stats.workers[0].running_job_ids:
            break
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.05)
    assert [(w.name, list(w.running_job_ids)) for w in stats.workers] == [("test-worker-1", [jobs[0].job_id])]
    assert (stats.fresh, stats.waiting, stats.active, stats.live) == (0, 2, 1, 3)
    assert stats.workers[0].last_seen_time.ToMilliseconds() > (time.time() - 15) * 1000


async def test_the_last_hour_counts_endings_by_state_and_failures_by_code(stack) -> None:
    for ids in (SMALL_IDS[:1], SMALL_IDS[1:2], MISSING_IDS):
        await wait_done(stack.stub, (await initiate(stack.stub, ids)).job_id)
    await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=(await initiate(stack.stub, SMALL_IDS[:1])).job_id))

    minutes = (await admin(stack).GetQueueHistory(apb.GetQueueHistoryRequest(), metadata=OPERATOR)).minutes
    current = minutes[-1].start_time.ToMilliseconds()
    assert len(minutes) == 60 and current <= time.time() * 1000 < current + 60_000
    assert (sum(m.completed for m in minutes), sum(m.failed for m in minutes), sum(m.cancelled for m in minutes)) == (2, 1, 1)
    assert [dict(m.failures) for m in minutes if m.failures] == [{"ALL_FILES_MISSING": 1}]
    assert minutes[-1].HasField("queued") and minutes[-1].HasField("running"), "the current minute is sampled when read"
    assert not minutes[0].HasField("queued"), "nobody sampled an hour ago"


async def test_jobs_across_tenants_are_listed_filtered_and_paged(make_stack) -> None:
    stack = await make_stack(workers=0)
    theirs_metadata = credentials.bearer(credentials.OTHER_TOKEN)
    first = await initiate(stack.stub, SMALL_IDS[:1])
    between = apb.JobFilter()
    between.created_after.FromMilliseconds(int(time.time() * 1000) + 1)
    await asyncio.sleep(0.002)  # the next job is created after that millisecond
    theirs = await initiate(stack.stub, SMALL_IDS[:1], metadata=theirs_metadata)
    cancelled = await initiate(stack.stub, SMALL_IDS[:1])
    await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=cancelled.job_id))

    async def listed(page_size: int = 1000, page_token: str = "", **filter_fields: object) -> apb.ListJobsResponse:
        request = apb.ListJobsRequest(filter=apb.JobFilter(**filter_fields), page_size=page_size, page_token=page_token)
        return await admin(stack).ListJobs(request, metadata=OPERATOR)

    everything = (await listed()).jobs
    assert [(j.job.job_id, j.tenant) for j in everything] == [
        (cancelled.job_id, credentials.TENANT), (theirs.job_id, credentials.OTHER_TENANT), (first.job_id, credentials.TENANT)
    ], "newest first, every tenant"
    assert [j.job.job_id for j in (await listed(tenant=credentials.OTHER_TENANT)).jobs] == [theirs.job_id]
    assert [j.job.job_id for j in (await listed(state=pb.JOB_STATE_CANCELLED)).jobs] == [cancelled.job_id]
    assert [j.job.job_id for j in (await listed(tenant=credentials.TENANT, state=pb.JOB_STATE_QUEUED)).jobs] == [first.job_id]
    assert len((await listed(created_after=between.created_after)).jobs) == 2
    assert [j.job.job_id for j in (await listed(created_before=between.created_after)).jobs] == [first.job_id]
    page = await listed(page_size=2)
    rest = await listed(page_size=2, page_token=page.next_page_token)
    assert [j.job.job_id for j in [*page.jobs, *rest.jobs]] == [j.job.job_id for j in everything]
    assert rest.next_page_token == ""

    expired = apb.ListJobsRequest(filter=apb.JobFilter(state=pb.JOB_STATE_EXPIRED))
    refusal = await refused(admin(stack).ListJobs(expired, metadata=OPERATOR))
    assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter.state" in refusal.details()

    await operations_pb2_grpc.OperationsStub(stack.channel).DeleteOperation(
        operations_pb2.DeleteOperationRequest(name=f"operations/{cancelled.job_id}")
    )
    assert [j.job.job_id for j in (await listed()).jobs] == [theirs.job_id, first.job_id], "a forgotten job is gone"


async def test_dead_letters_are_listed_filtered_paged_retried_and_discarded(make_stack, caplog) -> None:
    caplog.set_level(logging.INFO, logger="longhaul.audit")
    stack = await make_stack()
    ours = await failed_jobs(stack, 3)
    between = apb.DeadLetterFilter()
    between.failed_after.FromMilliseconds(int(time.time() * 1000) + 1)
    await asyncio.sleep(0.002)  # the next failure comes after that millisecond
    theirs = (await failed_jobs(stack, 1, credentials.bearer(credentials.OTHER_TOKEN)))[0]
    done = await wait_done(stack.stub, (await initiate(stack.stub, SMALL_IDS[:1])).job_id)

    async def count() -> int:
        return (await admin(stack).GetQueueStats(apb.GetQueueStatsRequest(), metadata=OPERATOR)).dead_letters

    listed = await dead_letters(stack)
    assert [d.job.job_id for d in listed] == [theirs.job_id, *[j.job_id for j in reversed(ours)]], "newest failure first"
    first = listed[-1]
    assert (first.tenant, first.job.attempts, first.job.worker) == (credentials.TENANT, 1, "test-worker-1")
    assert first.job.error.code == pb.JOB_ERROR_CODE_ALL_FILES_MISSING and list(first.job.file_ids) == MISSING_IDS
    assert [d.job.job_id for d in await dead_letters(stack, tenant=credentials.OTHER_TENANT)] == [theirs.job_id]
    assert len(await dead_letters(stack, error_code=pb.JOB_ERROR_CODE_ALL_FILES_MISSING)) == 4
    assert await dead_letters(stack, error_code=pb.JOB_ERROR_CODE_STORAGE_UNAVAILABLE) == []
    assert [d.job.job_id for d in await dead_letters(stack, failed_after=between.failed_after)] == [theirs.job_id]
    assert len(await dead_letters(stack, failed_before=between.failed_after)) == 3

    page = await admin(stack).ListDeadLetters(apb.ListDeadLettersRequest(page_size=3), metadata=OPERATOR)
    rest = await admin(stack).ListDeadLetters(
        apb.ListDeadLettersRequest(page_size=3, page_token=page.next_page_token), metadata=OPERATOR
    )
    assert [d.job.job_id for d in [*page.dead_letters, *rest.dead_letters]] == [d.job.job_id for d in listed]
    assert rest.next_page_token == ""

    discarded = await admin(stack).DiscardDeadLetters(apb.DiscardDeadLettersRequest(job_ids=[ours[0].job_id]), metadata=OPERATOR)
    assert list(discarded.discarded_job_ids) == [ours[0].job_id]
    assert ours[0].job_id not in [d.job.job_id for d in await dead_letters(stack)]
    owner_sees = (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=ours[0].job_id))).job
    assert owner_sees.state == pb.JOB_STATE_FAILED, "a discarded dead letter stays FAILED for its owner"

    everything = await refused(admin(stack).RetryDeadLetters(apb.RetryDeadLettersRequest(), metadata=OPERATOR))
    assert everything.code() == grpc.StatusCode.INVALID_ARGUMENT and "all: true" in everything.details()
    request = apb.RetryDeadLettersRequest(filter=apb.DeadLetterFilter(tenant=credentials.OTHER_TENANT))
    retried = await admin(stack).RetryDeadLetters(request, metadata=OPERATOR)
    assert (list(retried.retried_job_ids), retried.more) == ([theirs.job_id], False)
    again = await wait_done(stack.stub, theirs.job_id, metadata=credentials.bearer(credentials.OTHER_TOKEN))
    assert (again.state, again.retries) == (pb.JOB_STATE_FAILED, 1), "its files are still missing: a dead letter again"
    assert await count() == 3, "its first failure left the list when it was retried"
    assert [d.job.job_id for d in await dead_letters(stack, tenant=credentials.OTHER_TENANT)] == [theirs.job_id]

    named = apb.RetryDeadLettersRequest(job_ids=[ours[1].job_id, done.job_id])
    retried = await admin(stack).RetryDeadLetters(named, metadata=OPERATOR)
    assert list(retried.retried_job_ids) == [ours[1].job_id]
    assert [(n.job_id, n.reason) for n in retried.not_retried] == [(done.job_id, "not a dead letter (the job is COMPLETED)")]
    assert f"operator operator:{credentials.OPERATOR} retried 1 dead letters (jobs {ours[1].job_id}" in caplog.text
    assert f"operator operator:{credentials.OPERATOR} discarded 1 dead letters" in caplog.text
    await wait_done(stack.stub, ours[1].job_id)  # failed again

    before = await count()
    await operations_pb2_grpc.OperationsStub(stack.channel).DeleteOperation(
        operations_pb2.DeleteOperationRequest(name=f"operations/{ours[2].job_id}")
    )
    assert await count() == before - 1, "a forgotten job is no dead letter"


async def test_paused_intake_refuses_new_work_and_lets_the_rest_finish(make_stack, caplog) -> None:
    caplog.set_level(logging.INFO, logger="longhaul.audit")
    stack = await make_stack(workers=0)
    queued = await initiate(stack.stub, SMALL_IDS[:1], request_id="before-the-pause")
    cancelled = await initiate(stack.stub, SMALL_IDS[:1])
    await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=cancelled.job_id))
    pause = apb.PauseIntakeRequest(reason="draining for the Redis upgrade")
    pause.retry_after.FromSeconds(7)
    paused = (await admin(stack).PauseIntake(pause, metadata=OPERATOR)).intake
    assert (paused.paused, paused.paused_by, paused.retry_after.seconds) == (True, f"operator:{credentials.OPERATOR}", 7)

    refusal = await refused(stack.stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=SMALL_IDS[:1])))
    assert refusal.code() == grpc.StatusCode.UNAVAILABLE and "paused" in refusal.details()
    trailers = dict(refusal.trailing_metadata())
    assert trailers["retry-after"] == "7"
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    retry_info = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry_info) for detail in status.details) and retry_info.retry_delay.seconds == 7
    retry = await refused(stack.stub.RetryDownload(pb.RetryDownloadRequest(job_id=cancelled.job_id)))
    assert retry.code() == grpc.StatusCode.UNAVAILABLE
    again = await initiate(stack.stub, SMALL_IDS[:1], request_id="before-the-pause")
    assert again.job_id == queued.job_id, "a repeated request still finds its job"
    stats = await admin(stack).GetQueueStats(apb.GetQueueStatsRequest(), metadata=OPERATOR)
    assert stats.intake.reason == "draining for the Redis upgrade"

    await stack.add_worker()  # the queued job still runs
    assert (await wait_done(stack.stub, queued.job_id)).state == pb.JOB_STATE_COMPLETED

    resumed = (await admin(stack).ResumeIntake(apb.ResumeIntakeRequest(), metadata=OPERATOR)).intake
    assert not resumed.paused
    assert (await initiate(stack.stub, SMALL_IDS[:1])).state == pb.JOB_STATE_QUEUED
    assert f"operator operator:{credentials.OPERATOR} paused intake: draining for the Redis upgrade" in caplog.text
    assert f"operator operator:{credentials.OPERATOR} resumed intake" in caplog.text
