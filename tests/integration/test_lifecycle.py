"""A job's life beyond the happy path: idempotency, cancellation, resuming a watch, heartbeats,
expiry and server shutdown — against real Redis and SeaweedFS."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import grpc
import pytest

from jobs.connections import redis_client, s3_client_kwargs, s3_session
from jobs.keys import Keys
from jobs.model import F
from jobs.storage import artifact_key, artifacts_root
from jobs.store import JobStore
from jobs.tenants import tenant_slug
from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.credentials import TENANT
from tests.helpers import check_archive, initiate, open_uploads, wait_done, wait_state, watch_all

# Long enough that the job is certainly still running when the test acts on it.
SLOW = {"delay_min_ms": 4_000, "delay_max_ms": 4_000}


async def first_event(stub, job_id: str, predicate, after_seq: int = 0, timeout_s: float = 10):
    """Watches until a message satisfies `predicate`; returns (that message, all messages so far)."""
    seen = []
    call = stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id, after_seq=after_seq), timeout=timeout_s)
    async for message in call:
        seen.append(message)
        if predicate(message):
            call.cancel()
            return message, seen
    raise AssertionError(f"stream ended without a matching event: {seen[-1] if seen else None}")


# -- idempotency ------------------------------------------------------------------------------------


async def test_same_request_id_and_ids_returns_the_same_job(stack) -> None:
    first = await initiate(stack.stub, SMALL_IDS[:2], request_id="order-42")
    again = await initiate(stack.stub, SMALL_IDS[:2], request_id="order-42")
    assert again.job_id == first.job_id
    other = await initiate(stack.stub, SMALL_IDS[:2], request_id="order-43")
    assert other.job_id != first.job_id


async def test_request_id_reused_with_other_ids_is_an_error(stack) -> None:
    first = await initiate(stack.stub, SMALL_IDS[:2], request_id="order-7")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await initiate(stack.stub, SMALL_IDS[:3], request_id="order-7")
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "order-7" in error.value.details() and first.job_id in error.value.details()


async def test_concurrent_identical_requests_create_one_job(make_stack) -> None:
    stack = await make_stack(workers=0)
    replies = await asyncio.gather(*(initiate(stack.stub, SMALL_IDS[:3], request_id="race") for _ in range(100)))
    assert len({job.job_id for job in replies}) == 1
    listed = await stack.stub.ListDownloads(pb.ListDownloadsRequest())
    assert len(listed.jobs) == 1


async def test_a_finished_job_is_returned_again_without_rerunning(stack) -> None:
    first = await initiate(stack.stub, SMALL_IDS[:1], request_id="done-once")
    done = await wait_done(stack.stub, first.job_id)
    again = await initiate(stack.stub, SMALL_IDS[:1], request_id="done-once")
    assert again.job_id == first.job_id and again.state == pb.JOB_STATE_COMPLETED
    assert again.attempts == done.attempts == 1


# -- cancellation -----------------------------------------------------------------------------------


async def test_cancel_a_queued_job_and_it_never_starts(make_stack, caplog) -> None:
    caplog.set_level(logging.INFO, logger="worker.runner")
    stack = await make_stack(workers=0)
    job = await initiate(stack.stub, SMALL_IDS[:2])
    cancelled = (await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=job.job_id))).job
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    assert cancelled.finish_time.seconds > 0

    await stack.add_worker()  # a worker arrives and takes the queue entry
    deadline = time.monotonic() + 10
    while f"job {job.job_id} is already over" not in caplog.text:
        assert time.monotonic() < deadline, "the worker never took the queue entry"
        await asyncio.sleep(0.02)
    status = (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job
    assert status.state == pb.JOB_STATE_CANCELLED
    assert status.attempts == 0, "a cancelled queued job never starts"
    assert status.seq == cancelled.seq, "nothing happened to it after the cancel"


async def test_cancel_a_running_job_stops_it_and_aborts_its_upload(make_stack) -> None:
    stack = await make_stack(**SLOW)
    job = await initiate(stack.stub, SMALL_IDS[:3])
    # After the first file is packaged, the multipart upload certainly exists.
    await first_event(stack.stub, job.job_id, lambda m: m.job.files_done >= 1)
    assert await open_uploads(stack.settings, job.job_id), "the run is uploading"

    started = time.monotonic()
    cancelled = (await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=job.job_id))).job
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    runner = stack.workers[0]
    while runner._running:  # noqa: SLF001 - the test checks the worker really let go of the job
        assert time.monotonic() - started < 1.5, "the running job did not stop within about a second"
        await asyncio.sleep(0.02)

    assert await open_uploads(stack.settings, job.job_id) == [], "the partial multipart upload was aborted"
    messages = await watch_all(stack.stub, job.job_id)
    assert messages[-1].job.state == pb.JOB_STATE_CANCELLED


async def test_cancel_is_idempotent_and_refuses_finished_jobs(stack) -> None:
    done = await wait_done(stack.stub, (await initiate(stack.stub, SMALL_IDS[:1])).job_id)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=done.job_id))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "COMPLETED" in error.value.details()


async def test_cancelling_twice_returns_the_cancelled_job(make_stack) -> None:
    stack = await make_stack(workers=0)
    job = await initiate(stack.stub, SMALL_IDS[:1])
    once = (await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=job.job_id))).job
    twice = (await stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=job.job_id))).job
    assert once.state == twice.state == pb.JOB_STATE_CANCELLED
    assert once.seq == twice.seq


# -- watching ---------------------------------------------------------------------------------------


async def test_resume_after_a_drop_misses_nothing_and_repeats_nothing(make_stack) -> None:
    stack = await make_stack(delay_min_ms=2_500, delay_max_ms=2_500)
    job = await initiate(stack.stub, SMALL_IDS[:5])
    _, before = await first_event(stack.stub, job.job_id, lambda m: m.job.phase == pb.JOB_PHASE_PACKAGING)
    last_seen = before[-1].seq

    await asyncio.sleep(1.2)  # events happen while the client is away
    after = await watch_all(stack.stub, job.job_id, after_seq=last_seen)
    assert after[0].type != pb.EVENT_TYPE_SNAPSHOT, "history is there: replay, not a snapshot"

    uninterrupted = await watch_all(stack.stub, job.job_id, after_seq=0)
    full_history = list(range(1, uninterrupted[-1].seq + 1))
    changes = [m.seq for m in after if m.type != pb.EVENT_TYPE_HEARTBEAT]
    assert changes == full_history[last_seen:], "every change after last_seen, once, in order"
    assert after[-1].job.state == pb.JOB_STATE_COMPLETED
    check_archive(after[-1].job, SMALL_IDS[:5])


async def test_a_late_watcher_sees_the_state_at_once(make_stack) -> None:
    stack = await make_stack(**SLOW)
    job = await initiate(stack.stub, SMALL_IDS[:2])
    await first_event(stack.stub, job.job_id, lambda m: m.job.percent > 10)
    started = time.monotonic()
    first, _ = await first_event(stack.stub, job.job_id, lambda m: True)
    assert time.monotonic() - started < 1.0
    assert first.type == pb.EVENT_TYPE_SNAPSHOT
    assert first.job.state == pb.JOB_STATE_RUNNING and first.job.percent > 10
    assert first.job.HasField("estimated_time_remaining")


async def test_watching_a_finished_job_returns_at_once(stack) -> None:
    done = await wait_done(stack.stub, (await initiate(stack.stub, SMALL_IDS[:1])).job_id)
    started = time.monotonic()
    messages = await watch_all(stack.stub, done.job_id)
    assert time.monotonic() - started < 1.0
    assert len(messages) == 1
    assert messages[0].type == pb.EVENT_TYPE_SNAPSHOT
    assert messages[0].job.state == pb.JOB_STATE_COMPLETED
    assert messages[0].job.result.download_url
    assert messages[0].seq == done.seq
    # A client that already saw the terminal event gets nothing more.
    assert await watch_all(stack.stub, done.job_id, after_seq=done.seq) == []


async def test_heartbeats_while_nothing_changes(make_stack) -> None:
    stack = await make_stack(workers=0, heartbeat_s=0.2)
    job = await initiate(stack.stub, SMALL_IDS[:1])
    messages = []
    call = stack.stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=5)
    async for message in call:
        messages.append(message)
        if len(messages) == 4:
            call.cancel()
            break
    assert messages[0].type == pb.EVENT_TYPE_SNAPSHOT
    beats = messages[1:]
    assert all(m.type == pb.EVENT_TYPE_HEARTBEAT for m in beats)
    assert all(m.seq == job.seq and not m.HasField("job") for m in beats), "heartbeats carry the last seq only"
    gaps = [b.event_time.ToMilliseconds() - a.event_time.ToMilliseconds() for a, b in itertools.pairwise(beats)]
    assert all(100 <= gap <= 2_000 for gap in gaps), gaps


async def test_resume_with_lost_history_gets_a_fresh_snapshot(make_stack) -> None:
    stack = await make_stack(workers=0)
    job = await initiate(stack.stub, SMALL_IDS[:1])
    redis = redis_client(stack.settings)
    try:
        await redis.delete(Keys(stack.settings.redis_prefix).events(job.job_id))
        await redis.hset(Keys(stack.settings.redis_prefix).job(job.job_id), "seq", 10)
    finally:
        await redis.aclose()
    first, _ = await first_event(stack.stub, job.job_id, lambda m: True, after_seq=3)
    assert first.type == pb.EVENT_TYPE_SNAPSHOT
    assert first.seq == 10


async def test_resume_ahead_of_the_job_is_out_of_range(stack) -> None:
    job = await initiate(stack.stub, SMALL_IDS[:1])
    done = await wait_done(stack.stub, job.job_id)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await watch_all(stack.stub, job.job_id, after_seq=done.seq + 5)
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "after_seq" in error.value.details()


async def test_server_shutdown_ends_streams_with_unavailable_and_the_seq_to_resume(make_stack) -> None:
    stack = await make_stack(workers=0)
    job = await initiate(stack.stub, SMALL_IDS[:1])
    call = stack.stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=10)
    snapshot = await call.read()
    assert snapshot.type == pb.EVENT_TYPE_SNAPSHOT
    stopping = asyncio.create_task(stack.server.stop())
    with pytest.raises(grpc.aio.AioRpcError) as error:
        while True:
            message = await call.read()
            assert message is not grpc.aio.EOF, "the stream must end with a status, not just stop"
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"after_seq={snapshot.seq}" in error.value.details()
    await stopping


# -- retention --------------------------------------------------------------------------------------


async def test_finished_jobs_expire_and_their_artifacts_are_deleted(make_stack) -> None:
    stack = await make_stack(job_ttl_s=1, housekeeping_interval_s=0.2)
    job = await initiate(stack.stub, SMALL_IDS[:1])
    # A failed job whose superseded run still finished an upload: an orphan to clean up too.
    orphan = await initiate(stack.stub, MISSING_IDS)
    assert (await wait_done(stack.stub, orphan.job_id)).state == pb.JOB_STATE_FAILED
    done = await wait_done(stack.stub, job.job_id)
    assert done.expire_time.ToMilliseconds() - done.finish_time.ToMilliseconds() == 1000
    assert done.result.url_expire_time.ToMilliseconds() <= done.expire_time.ToMilliseconds() + 1000, (
        "a download URL never outlives the artifact"
    )
    s = stack.settings
    async with s3_session().client("s3", **s3_client_kwargs(s)) as s3:
        await s3.put_object(
            Bucket=s.artifact_bucket, Key=artifact_key(s.redis_prefix, tenant_slug(TENANT), orphan.job_id), Body=b"late upload"
        )
        await s3.head_object(Bucket=s.artifact_bucket, Key=artifact_key(s.redis_prefix, tenant_slug(TENANT), job.job_id))
        status = await wait_state(stack.stub, job.job_id, pb.JOB_STATE_EXPIRED)
        assert status.expire_time.ToMilliseconds() <= time.time() * 1000
        messages = await watch_all(stack.stub, job.job_id)
        assert [m.job.state for m in messages] == [pb.JOB_STATE_EXPIRED]
        listed = await stack.stub.ListDownloads(pb.ListDownloadsRequest())
        assert {(j.job_id, j.state) for j in listed.jobs} == {
            (job.job_id, pb.JOB_STATE_EXPIRED), (orphan.job_id, pb.JOB_STATE_EXPIRED)
        }
        deadline = time.monotonic() + 10
        left = await artifacts(s3, s, [job.job_id, orphan.job_id])
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            left = await artifacts(s3, s, [job.job_id, orphan.job_id])
        assert not left, f"expired artifacts still in S3: {left}"
    async with redis_client(s) as redis:
        assert await redis.zcard(Keys(s.redis_prefix).sweep) == 0, "nothing left scheduled"


async def artifacts(s3, settings, job_ids: list[str]) -> list[str]:
    """The artifacts of these jobs still in the bucket."""
    root = artifacts_root(settings.redis_prefix)
    reply = await s3.list_objects_v2(Bucket=settings.artifact_bucket, Prefix=root)
    keys = {o["Key"] for o in reply.get("Contents", [])}
    return [key for j in job_ids if (key := artifact_key(settings.redis_prefix, tenant_slug(TENANT), j)) in keys]


async def test_a_job_stranded_before_its_enqueue_is_enqueued_by_housekeeping(make_stack) -> None:
    # A worker's relay took the job from the fresh list and died before enqueueing it: only the
    # record and its live-jobs entry are left.
    stack = await make_stack(workers=0, housekeeping_interval_s=0.2, enqueue_grace_s=0.5)
    async with redis_client(stack.settings) as redis:
        store = JobStore(redis, stack.settings)
        fields, _ = await store.create(TENANT, SMALL_IDS[:2])
        assert await redis.lpop(store.keys.fresh)
    await stack.add_worker()
    done = await wait_done(stack.stub, fields[F.ID], timeout_s=15)
    assert done.state == pb.JOB_STATE_COMPLETED, done
    check_archive(done, SMALL_IDS[:2])


async def test_a_burst_of_thousands_of_watchers_all_get_their_snapshot(make_stack) -> None:
    # More new calls at once than gRPC's default pending-call limits (1,000 / 3,000), as after a
    # server restart when every client reconnects: none may be cancelled. (No worker: the jobs stay queued.)
    stack = await make_stack(workers=0)
    count = 3_500
    async with redis_client(stack.settings) as redis:
        store = JobStore(redis, stack.settings)
        job_ids = []
        for _ in range(0, count, 500):
            created = await asyncio.gather(*(store.create(TENANT, SMALL_IDS[:1]) for _ in range(500)))
            job_ids += [fields[F.ID] for fields, _ in created]

    async def snapshot(job_id: str) -> int:
        call = stack.stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id), timeout=60)
        message = await call.read()
        call.cancel()
        return message.type

    types = await asyncio.gather(*(snapshot(j) for j in job_ids), return_exceptions=True)
    failures = [t for t in types if t != pb.EVENT_TYPE_SNAPSHOT]
    assert not failures, f"{len(failures)} of {count} watches failed, e.g. {failures[0]}"
