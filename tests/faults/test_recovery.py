"""Faults injected for real: workers SIGKILLed or SIGTERMed mid-job, S3 stopped mid-upload. Each
test checks that the job still ends right, with a correct archive, and says what happened."""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import pytest

from devstack.processes import ManagedProcess, free_port
from devstack.seed import seed_sources
from devstack.services import python_process, start_seaweedfs
from jobs.connections import redis_client, s3_client_kwargs, s3_session
from jobs.keys import Keys
from jobs.storage import artifact_key
from jobs.tenants import tenant_slug
from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import SMALL_IDS
from tests.credentials import TENANT
from tests.helpers import (
    check_archive,
    initiate,
    open_uploads,
    until_no_open_uploads,
    wait_done,
    wait_running_on,
    watch_all,
)

# Short locks so a dead worker's job moves on in about 3 s instead of about 15 s.
FAST_RECOVERY = {"lock_ms": 2_000, "stalled_check_ms": 1_000, "shutdown_grace_s": 0.5}


def start_worker(stack, work_dir, name: str) -> ManagedProcess:
    env = stack.settings.replace(worker_name=name).to_env()
    return python_process(f"{stack.settings.redis_prefix}-{name}", "worker", env, work_dir / "logs")


async def test_a_sigkilled_workers_job_completes_on_another_worker(make_stack, work_dir) -> None:
    stack = await make_stack(workers=0, delay_min_ms=3_000, delay_max_ms=3_000, **FAST_RECOVERY)
    first = start_worker(stack, work_dir, "first")
    job = await initiate(stack.stub, SMALL_IDS[:4])
    running = await wait_running_on(stack, job.job_id)
    assert running.worker == "first"
    second = start_worker(stack, work_dir, "second")
    try:
        first.kill()
        killed_at = time.monotonic()
        taken = await wait_running_on(stack, job.job_id, not_on="first")
        recovered_s = time.monotonic() - killed_at
        done = await wait_done(stack.stub, job.job_id)
        assert done.state == pb.JOB_STATE_COMPLETED, done
        assert taken.worker == "second" and done.attempts == 2
        # lock (2 s) + stalled check (1 s) + scheduling slack; the README's figure at default
        # settings (10 s + 5 s) scales the same way.
        assert recovered_s < 6, recovered_s
        check_archive(done, SMALL_IDS[:4])
    finally:
        second.stop()


async def test_a_job_that_keeps_killing_its_workers_fails_and_says_so(make_stack, work_dir) -> None:
    stack = await make_stack(workers=0, delay_min_ms=5_000, delay_max_ms=5_000, max_attempts=2, **FAST_RECOVERY)
    job = await initiate(stack.stub, SMALL_IDS[:2])
    workers: list[ManagedProcess] = []
    try:
        previous = ""
        for round_ in range(2):
            worker = start_worker(stack, work_dir, f"doomed-{round_}")
            workers.append(worker)
            await wait_running_on(stack, job.job_id, not_on=previous)
            previous = f"doomed-{round_}"
            worker.kill()
        workers.append(start_worker(stack, work_dir, "survivor"))
        done = await wait_done(stack.stub, job.job_id)
        assert done.state == pb.JOB_STATE_FAILED
        assert done.error.code == pb.JOB_ERROR_CODE_TOO_MANY_ATTEMPTS
        assert "gave up after 2 attempts" in done.error.message
    finally:
        for worker in workers:
            worker.stop()


async def test_sigterm_hands_a_running_job_to_another_worker_at_once(make_stack, work_dir) -> None:
    stack = await make_stack(workers=0, delay_min_ms=4_000, delay_max_ms=4_000, **{**FAST_RECOVERY, "lock_ms": 30_000})
    first = start_worker(stack, work_dir, "first")
    job = await initiate(stack.stub, SMALL_IDS[:3])
    await wait_running_on(stack, job.job_id)
    second = start_worker(stack, work_dir, "second")
    try:
        first.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        await wait_running_on(stack, job.job_id, not_on="first")
        # Far sooner than the 30 s lock would lapse: the job was handed back, not abandoned.
        assert time.monotonic() - stopped_at < 5
        assert first.proc.wait(10) == 0
        done = await wait_done(stack.stub, job.job_id)
        assert done.state == pb.JOB_STATE_COMPLETED and done.attempts == 2
        check_archive(done, SMALL_IDS[:3])
    finally:
        second.stop()


async def test_a_presumed_dead_worker_that_wakes_up_changes_nothing(make_stack, work_dir) -> None:
    # SIGSTOP freezes the first worker mid-job (a long GC pause, a frozen VM): its lock lapses and
    # the second worker runs the job to the end. Then the first one wakes up and carries on.
    stack = await make_stack(workers=0, delay_min_ms=3_000, delay_max_ms=3_000, **FAST_RECOVERY)
    first = start_worker(stack, work_dir, "sleeper")
    job = await initiate(stack.stub, SMALL_IDS[:4])
    await wait_running_on(stack, job.job_id)
    first.signal(signal.SIGSTOP)
    second = start_worker(stack, work_dir, "second")
    try:
        await wait_running_on(stack, job.job_id, not_on="sleeper")
        done = await wait_done(stack.stub, job.job_id)
        assert done.state == pb.JOB_STATE_COMPLETED and done.worker == "second"
        assert len(await open_uploads(stack.settings, job.job_id)) == 1, "the sleeper's upload, open"

        first.signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while "this run no longer owns the job" not in first.tail() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "this run no longer owns the job" in first.tail(), "the woken run was fenced off"
        assert first.alive(), "a superseded run is no reason for the worker to die"

        after = (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job
        assert (after.seq, after.result.sha256) == (done.seq, done.result.sha256), "the result was written once"
        history = await watch_all(stack.stub, job.job_id, after_seq=1)  # the whole history
        completions = [m for m in history if m.type == pb.EVENT_TYPE_STATE_CHANGED and m.job.state == pb.JOB_STATE_COMPLETED]
        assert len(completions) == 1
        check_archive(after, SMALL_IDS[:4])
        await until_no_open_uploads(stack.settings, job.job_id)  # the woken run aborts its partial upload
    finally:
        first.signal(signal.SIGCONT)
        first.stop()
        second.stop()


@pytest.fixture
def private_s3(base_settings, tmp_path):
    """A SeaweedFS of this test's own, to stop and restart."""
    port = free_port(also_free=(10000,))
    settings = base_settings.replace(s3_endpoint=f"http://127.0.0.1:{port}")

    def start() -> ManagedProcess:
        return start_seaweedfs(
            tmp_path / "s3", tmp_path / "logs", port, settings.s3_access_key_id, settings.s3_secret_access_key,
            [settings.source_bucket, settings.artifact_bucket],
        )

    holder = {"proc": start()}
    yield settings, holder, start
    holder["proc"].stop()


async def test_an_s3_outage_mid_job_is_retried_with_backoff_and_the_job_completes(make_stack, private_s3) -> None:
    s3_settings, holder, start_s3 = private_s3
    async with s3_session().client("s3", **s3_client_kwargs(s3_settings)) as s3:
        await seed_sources(s3, s3_settings, SMALL_IDS[:5])
    stack = await make_stack(
        # 10 attempts at 0.5 s doubling: about a minute of backoff, ample for a slow restart under load.
        # botocore tries each request twice, not five times: the job's own retry comes in a second or so.
        s3_endpoint=s3_settings.s3_endpoint, delay_min_ms=2_500, delay_max_ms=2_500, retry_base_ms=500, max_attempts=10,
        s3_max_attempts=2,
    )
    job = await initiate(stack.stub, SMALL_IDS[:5])
    await wait_running_on(stack, job.job_id)

    holder["proc"].stop()  # S3 goes away mid-job
    seen_retry = None
    # botocore retries a refused connection itself first; only then does the job retry.
    deadline = time.monotonic() + 45
    while seen_retry is None and time.monotonic() < deadline:
        status = (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job
        if status.state == pb.JOB_STATE_QUEUED and status.error.code:
            seen_retry = status
        await asyncio.sleep(0.05)
    assert seen_retry is not None, "the failure was not turned into a scheduled retry"
    assert seen_retry.error.code == pb.JOB_ERROR_CODE_STORAGE_UNAVAILABLE and seen_retry.error.retryable
    assert seen_retry.next_attempt_time.ToMilliseconds() > seen_retry.update_time.ToMilliseconds() - 1
    assert "retrying in" in seen_retry.message

    await asyncio.sleep(1.5)  # more failed attempts while S3 stays down
    holder["proc"] = start_s3()
    done = await wait_done(stack.stub, job.job_id, timeout_s=90)
    assert done.state == pb.JOB_STATE_COMPLETED, done
    assert done.attempts >= 2
    assert not done.HasField("error"), "an earlier attempt's error does not stick to a completed job"
    check_archive(done, SMALL_IDS[:5])


async def test_a_stuck_attempt_is_stopped_retried_and_then_failed(make_stack) -> None:
    # Every attempt "hangs" (paced far past the limit): each is stopped at 0.5 s, retried, then failed.
    stack = await make_stack(
        delay_min_ms=60_000, delay_max_ms=60_000, attempt_timeout_s=0.5, max_attempts=2, retry_base_ms=100
    )
    job = await initiate(stack.stub, SMALL_IDS[:1])
    done = await wait_done(stack.stub, job.job_id, timeout_s=15)
    assert done.state == pb.JOB_STATE_FAILED
    assert done.error.code == pb.JOB_ERROR_CODE_ATTEMPT_TIMEOUT and done.attempts == 2
    assert done.error.message.startswith("gave up after 2 attempts") and "s limit" in done.error.message
    assert stack.workers[0]._running == {}  # noqa: SLF001 - nothing is left running


async def test_a_job_redelivered_to_the_worker_still_running_it_runs_once_and_keeps_its_lock(make_stack, caplog) -> None:
    # A lock lapses while its worker still runs the job (here deleted; in life, Redis was unreachable
    # longer than the lock): bullmq delivers the job again, often to that same worker. The earlier run
    # must stop, and the new delivery's lock must stay renewed after the earlier delivery ends.
    caplog.set_level(logging.INFO)
    stack = await make_stack(delay_min_ms=8_000, delay_max_ms=8_000, **FAST_RECOVERY)
    job = await initiate(stack.stub, SMALL_IDS[:3])
    await wait_running_on(stack, job.job_id)
    s = stack.settings
    assert await open_uploads(s, job.job_id), "the first run is uploading"
    lock = f"{Keys(s.redis_prefix).queue_job(s.queue_name, job.job_id)}:lock"
    redis = redis_client(s)
    try:
        assert await redis.delete(lock) == 1
    finally:
        await redis.aclose()

    done = await wait_done(stack.stub, job.job_id, timeout_s=40)
    assert done.state == pb.JOB_STATE_COMPLETED, done
    # Delivered twice, run twice: a lock that went unrenewed would have meant a third delivery.
    assert done.attempts == 2, done
    # The earlier run was stopped before the new one began, not fenced off later by its next write.
    assert "no longer owns the job" not in caplog.text
    assert "delivered again while this worker still runs it" in caplog.text
    assert stack.workers[0]._running == {}  # noqa: SLF001 - nothing is left running
    check_archive(done, SMALL_IDS[:3])
    assert await open_uploads(s, job.job_id) == [], "the stopped run aborted its partial upload"


async def test_uploads_left_open_by_sigkilled_workers_are_aborted_by_housekeeping(make_stack, work_dir) -> None:
    # An attempt may run 4 s here: an upload older than that (and a round) has no run left to finish it.
    stack = await make_stack(
        workers=0, delay_min_ms=2_000, delay_max_ms=2_000, attempt_timeout_s=4, housekeeping_interval_s=0.5,
        **FAST_RECOVERY,
    )
    s = stack.settings
    jobs = [await initiate(stack.stub, SMALL_IDS[:3]) for _ in range(2)]
    victims = [start_worker(stack, work_dir, f"victim-{n}") for n in range(2)]
    expected = {artifact_key(s.redis_prefix, tenant_slug(TENANT), job.job_id) for job in jobs}
    deadline = time.monotonic() + 20
    while set(await open_uploads(s)) != expected:
        assert time.monotonic() < deadline, "the jobs never started uploading"
        await asyncio.sleep(0.05)
    for victim in victims:
        victim.kill()
    survivor = start_worker(stack, work_dir, "survivor")
    try:
        for job in jobs:
            check_archive(await wait_done(stack.stub, job.job_id), SMALL_IDS[:3])
        await until_no_open_uploads(s, timeout_s=20)  # once housekeeping sees them older than any attempt
    finally:
        survivor.stop()
