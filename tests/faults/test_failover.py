"""Losing Redis's primary: real redis-server processes, a primary with two replicas and three
sentinels, under a server and a worker (processes) behind Envoy. Jobs are created through gRPC and
REST while the primary is failed over (forced with SENTINEL FAILOVER, then SIGKILLed). Every job the
service acknowledged must complete with the right archive, exactly once in S3, and every watcher,
resuming from its last seq after each drop, must see a gap-free, increasing sequence."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from devstack.sentinel import MASTER_NAME, SentinelRedis
from jobs.connections import s3_client_kwargs, s3_session
from jobs.storage import artifacts_root
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from tests.conftest import SMALL_IDS
from tests.credentials import channel
from tests.gateway.conftest import Gateway, start_gateway, stop_gateway
from tests.helpers import check_archive, follow_resuming
from tests.web_clients import rest

JOBS = 50
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.fixture(scope="module")
def topology(work_dir: Path) -> Iterator[SentinelRedis]:
    started = SentinelRedis(work_dir / "sentinel-redis", work_dir / "logs").start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def gateway(base_settings, work_dir: Path, topology: SentinelRedis) -> Iterator[Gateway]:
    started = start_gateway(
        base_settings, work_dir, redis_sentinels=topology.sentinel_addresses, redis_sentinel_master=MASTER_NAME,
        redis_wait_replicas=1, delay_min_ms=300, delay_max_ms=1_500, worker_concurrency=16,
        # The production defaults: the tests' 2 s locks lapse while a failover holds writes back.
        lock_ms=10_000, stalled_check_ms=5_000,
    )
    yield started
    stop_gateway(started)


@dataclass
class Run:
    """What one chaos run saw: acknowledged jobs, what each watcher received, and when."""

    acknowledged: dict[str, list[int]] = field(default_factory=dict)  # job id -> its file ids
    seqs: dict[str, list[int]] = field(default_factory=dict)
    finals: dict[str, pb.Job] = field(default_factory=dict)
    refusals: list[tuple[float, str]] = field(default_factory=list)  # (s after the failure, why), to be repeated
    first_success_after_failure_s: float | None = None
    failed_at: float = 0.0
    completed_s: float = 0.0  # from the failure to the last job's end


async def create(stub, gateway: Gateway, run: Run, index: int, file_ids: list[int]) -> str:
    """Creates a job through gRPC (even index) or REST (odd), repeating the call with the same
    request_id until it is acknowledged, as the contract says a client may."""
    request_id = f"failover-{uuid.uuid4().hex[:12]}"
    while True:
        if index % 2 == 0:
            try:
                request = pb.InitiateDownloadRequest(file_ids=file_ids, request_id=request_id)
                reply = await stub.InitiateDownload(request, timeout=10)
                job_id = reply.job.job_id
                break
            except grpc.aio.AioRpcError as error:
                assert error.code() in RETRYABLE, error
                why = f"{error.code().name}: {error.details()}"
        else:
            body = {"file_ids": file_ids, "request_id": request_id}
            status, _, reply = await asyncio.to_thread(rest, gateway.port, "POST", "/v1/download/initiate", body)
            if status == 200:
                job_id = reply["job"]["jobId"]
                break
            assert status in (503, 504), (status, reply)
            why = f"HTTP {status}: {reply}"
        run.refusals.append((time.monotonic() - run.failed_at, why))
        await asyncio.sleep(0.1)
    if run.failed_at and run.first_success_after_failure_s is None:
        run.first_success_after_failure_s = time.monotonic() - run.failed_at
    run.acknowledged[job_id] = file_ids
    return job_id


async def watch(stub, run: Run, job_id: str) -> None:
    run.seqs[job_id], run.finals[job_id], _ = await follow_resuming(stub, job_id, RETRYABLE)


async def chaos_run(gateway: Gateway, fail: Callable[[], None]) -> Run:
    """Creates JOBS jobs, half before and half after `fail()` is called, each watched to its end."""
    run, rng = Run(), random.Random(17)
    async with channel(gateway.address) as ch:
        stub = pb_grpc.DownloadServiceStub(ch)

        async def one(index: int) -> None:
            await asyncio.sleep(index * 0.05)
            job_id = await create(stub, gateway, run, index, rng.sample(SMALL_IDS, rng.randint(1, 3)))
            await watch(stub, run, job_id)

        jobs = [asyncio.create_task(one(index)) for index in range(JOBS)]
        await asyncio.sleep(JOBS * 0.05 / 2)
        run.failed_at = time.monotonic()
        await asyncio.to_thread(fail)
        done, pending = await asyncio.wait(jobs, timeout=60)
        unfinished = {job_id: seqs[-1:] for job_id, seqs in run.seqs.items() if job_id not in run.finals
                      or run.finals[job_id].state != pb.JOB_STATE_COMPLETED}
        for task in pending:
            task.cancel()
        assert not pending, f"{len(pending)} jobs never ended: {unfinished}"
        for task in done:
            task.result()
    run.completed_s = time.monotonic() - run.failed_at
    return run


async def check(gateway: Gateway, run: Run) -> None:
    assert len(run.acknowledged) == JOBS
    for job_id, file_ids in run.acknowledged.items():
        seqs = run.seqs[job_id]
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"{job_id}: gap or repeat in {seqs}"
        check_archive(run.finals[job_id], file_ids)
    s = gateway.settings
    async with s3_session().client("s3", **s3_client_kwargs(s)) as s3:
        listed = await s3.list_objects_v2(Bucket=s.artifact_bucket, Prefix=artifacts_root(s.redis_prefix))
    keys = [item["Key"] for item in listed.get("Contents", [])]
    for job_id in run.acknowledged:
        assert len([key for key in keys if job_id in key]) == 1, f"job {job_id} has no artifact, or more than one"


def report(what: str, run: Run) -> None:
    print(  # the figures the note and BENCHMARKS.md quote (pytest -s shows them)
        f"\n{what}: first acknowledged call {run.first_success_after_failure_s:.2f} s after the failure, "
        f"last job completed {run.completed_s:.2f} s after it; {len(run.refusals)} calls refused meanwhile:"
    )
    for after_s, why in run.refusals:
        print(f"  {after_s:6.2f} s  {why[:160]}")


async def test_a_forced_failover_loses_no_job_and_no_event(gateway, topology: SentinelRedis) -> None:
    old = topology.primary_port()

    def fail_over() -> None:
        with redis.Redis(port=topology.sentinel_ports[0]) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        topology.wait_until_settled(topology.wait_for_new_primary(old))

    run = await chaos_run(gateway, fail_over)
    await check(gateway, run)
    report("SENTINEL FAILOVER", run)


async def test_the_primary_killed_loses_no_acknowledged_job(gateway, topology: SentinelRedis) -> None:
    old = topology.primary_port()

    def kill() -> None:
        topology.nodes[old].kill()

    run = await chaos_run(gateway, kill)
    await check(gateway, run)
    report("primary SIGKILLed", run)
    new = topology.primary_port()
    assert new is not None and new != old
