"""Chaos: many jobs while a loop SIGKILLs random workers and starts replacements. Every job must end
COMPLETED with the right archive, none may be left RUNNING, and every watcher must have seen a gap-free,
repeat-free sequence of events."""

from __future__ import annotations

import asyncio
import random

from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import SMALL_IDS
from tests.faults.test_recovery import FAST_RECOVERY, start_worker
from tests.helpers import check_archive, initiate

JOBS = 12
CHAOS_ROUNDS = 6


async def watch_seqs(stub, job_id: str) -> tuple[list[int], pb.Job]:
    """The seqs a watcher saw (snapshot first) and the final job."""
    seqs: list[int] = []
    job = None
    async for message in stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id), timeout=90):
        if message.type != pb.EVENT_TYPE_HEARTBEAT:
            seqs.append(message.seq)
            job = message.job
    return seqs, job


async def test_jobs_survive_workers_killed_at_random(make_stack, work_dir) -> None:
    # 12 jobs, 3 workers of 4 slots: every worker holds jobs, so every kill hits running work.
    stack = await make_stack(
        workers=0, delay_min_ms=2_000, delay_max_ms=4_000, max_attempts=20, worker_concurrency=4, **FAST_RECOVERY
    )
    rng = random.Random(7)
    workers = [start_worker(stack, work_dir, f"chaos-{n}") for n in range(3)]
    spawned = len(workers)
    try:
        requests = [rng.sample(SMALL_IDS, rng.randint(1, 4)) for _ in range(JOBS)]
        jobs = [await initiate(stack.stub, ids) for ids in requests]
        watchers = [asyncio.create_task(watch_seqs(stack.stub, job.job_id)) for job in jobs]

        for _ in range(CHAOS_ROUNDS):
            await asyncio.sleep(0.6)
            victim = workers.pop(rng.randrange(len(workers)))
            victim.kill()
            workers.append(start_worker(stack, work_dir, f"chaos-{spawned}"))
            spawned += 1

        results = await asyncio.wait_for(asyncio.gather(*watchers), 90)
        for (seqs, final), ids in zip(results, requests, strict=True):
            assert final.state == pb.JOB_STATE_COMPLETED, final
            assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"gap or repeat in {seqs}"
            check_archive(final, ids)
        listed = await stack.stub.ListDownloads(pb.ListDownloadsRequest(page_size=100))
        assert all(job.state == pb.JOB_STATE_COMPLETED for job in listed.jobs)
        restarted = sum(job.attempts for job in listed.jobs) - JOBS
        assert restarted > 0, "no kill hit a running job: the run proved nothing"
    finally:
        for worker in workers:
            worker.stop()
