"""Redis restarts (persisted with AOF, as in production) while a job runs and a watcher is open."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from devstack.processes import free_port
from devstack.services import start_redis
from jobs.keys import Keys
from jobs.tenants import tenant_slug
from longhaul.download.v1 import download_pb2 as pb
from longhaul_client import TERMINAL_STATES
from tests import credentials
from tests.conftest import SMALL_IDS
from tests.credentials import TENANT
from tests.helpers import check_archive, initiate, wait_done, wait_running_on


class RestartableRedis:
    """A Redis of the test's own, persisted with AOF, that the test can restart."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self._dirs = (tmp_path / "redis", tmp_path / "logs")
        self.start()

    def stop(self) -> None:
        self.proc.stop()  # SIGTERM: Redis writes its AOF and exits

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL, as a crash: the AOF holds what Redis had written before it

    def start(self) -> None:
        self.proc = start_redis(self.port, *self._dirs, appendonly=True)

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    # Requested before make_stack, so it is torn down after the stack: stopping workers whose Redis
    # is gone takes the hand-back window (5 s) each.
    redis = RestartableRedis(tmp_path)
    yield redis
    redis.stop()


async def test_server_and_workers_ride_out_a_redis_restart(own_redis, make_stack) -> None:
    # The tests' 2 s lock, shorter than the restart: the running job's lock lapses while Redis is down
    # and bullmq delivers the job again, often to the same worker while its first run goes on.
    stack = await make_stack(redis_url=f"redis://127.0.0.1:{own_redis.port}/0", delay_min_ms=4_000, delay_max_ms=4_000)
    other = await initiate(stack.stub, SMALL_IDS[:1])  # a second job, unwatched
    job = await initiate(stack.stub, SMALL_IDS[:3])

    seen: list[pb.WatchProgressResponse] = []

    async def watch_with_resume() -> pb.Job:
        """What a client does: resume by after_seq when the stream ends with UNAVAILABLE."""
        while True:
            after = seen[-1].seq if seen else 0
            try:
                async for message in stack.stub.WatchProgress(
                    pb.WatchProgressRequest(job_id=job.job_id, after_seq=after), timeout=60
                ):
                    if message.type not in (pb.EVENT_TYPE_HEARTBEAT, pb.EVENT_TYPE_ERROR):
                        seen.append(message)
                return seen[-1].job
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                await asyncio.sleep(0.3)  # a client's back-off before it resumes

    watcher = asyncio.create_task(watch_with_resume())
    deadline = time.monotonic() + 20
    while not any(m.job.state == pb.JOB_STATE_RUNNING for m in seen):  # the watch is live mid-run
        assert time.monotonic() < deadline and not watcher.done(), seen
        await asyncio.sleep(0.02)
    await asyncio.to_thread(own_redis.restart, 1.0)

    final = await asyncio.wait_for(watcher, 60)
    assert final.state == pb.JOB_STATE_COMPLETED, final
    check_archive(final, SMALL_IDS[:3])
    seqs = [m.seq for m in seen]
    assert seqs == sorted(set(seqs)), "nothing twice, in order"
    other_done = await wait_done(stack.stub, other.job_id, timeout_s=60)
    assert other_done.state == pb.JOB_STATE_COMPLETED, "no job was lost across the restart"


async def test_a_worker_stopped_while_redis_is_down_stops_and_its_job_is_not_lost(own_redis, make_stack) -> None:
    stack = await make_stack(redis_url=f"redis://127.0.0.1:{own_redis.port}/0", delay_min_ms=3_000, delay_max_ms=3_000)
    job = await initiate(stack.stub, SMALL_IDS[:3])
    await wait_running_on(stack, job.job_id)
    first = stack.workers.pop()

    await asyncio.to_thread(own_redis.stop)
    # bullmq retries each call for minutes while Redis is away; the worker gives up on the queue
    # after its grace period and the hand-back window (5 s) and stops.
    await asyncio.wait_for(first.stop(), 30)

    await asyncio.to_thread(own_redis.start)
    await stack.add_worker(worker_name="after-the-outage")
    done = await wait_done(stack.stub, job.job_id, timeout_s=60)
    assert done.state == pb.JOB_STATE_COMPLETED and done.worker == "after-the-outage", done
    assert done.attempts == 2, "the stopped worker's attempt was counted, and one more ran"
    check_archive(done, SMALL_IDS[:3])


@pytest.mark.parametrize("down_s", [1, 3, 5, 10])
async def test_no_job_is_left_running_when_redis_is_killed_mid_run(own_redis, make_stack, down_s: float) -> None:
    """Redis SIGKILLed while 20 jobs run, back after `down_s`: every job still completes and leaves the
    tenant's active set, whichever write the outage broke (a progress write, the hand-back, the result)."""
    stack = await make_stack(
        workers=2,
        redis_url=f"redis://127.0.0.1:{own_redis.port}/0",
        delay_min_ms=2_500,
        delay_max_ms=2_500,
        retry_base_ms=100,
        housekeeping_interval_s=0.5,
        enqueue_grace_s=1,
        # Production's lock, longer than most outages here: the runs' locks outlive the outage, so
        # bullmq can record whatever our processor does when Redis comes back (not so with the
        # tests' 2 s lock, where every run lapses and bullmq delivers it again).
        lock_ms=10_000,
        stalled_check_ms=5_000,
    )
    jobs = [await initiate(stack.stub, SMALL_IDS[:2]) for _ in range(20)]
    await _until(lambda states: sum(s == pb.JOB_STATE_RUNNING for s in states) >= 12, stack, jobs, 20)

    await asyncio.to_thread(own_redis.kill)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(own_redis.start)

    states = await _until(lambda states: all(s in TERMINAL_STATES for s in states), stack, jobs, 60)
    assert states == [pb.JOB_STATE_COMPLETED] * len(jobs), states
    async with Redis.from_url(stack.settings.redis_url, decode_responses=True) as redis:
        active = await redis.smembers(Keys(stack.settings.redis_prefix).active(tenant_slug(TENANT)))
    assert not active, "every finished job gave its place in the tenant's quota back"


async def _until(done, stack, jobs: list[pb.Job], timeout_s: float) -> list[int]:
    """Polls the jobs' states until `done(states)`; Redis may still be coming back, so a failed poll
    is polled again."""
    deadline = time.monotonic() + timeout_s
    states: list[int] = []
    while time.monotonic() < deadline:
        try:
            states = [(await stack.stub.GetStatus(pb.GetStatusRequest(job_id=j.job_id))).job.state for j in jobs]
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        else:
            if done(states):
                return states
        await asyncio.sleep(0.2)
    raise AssertionError(f"not reached within {timeout_s} s: {[pb.JobState.Name(s) for s in states]}")


async def test_while_redis_is_down_the_file_link_is_503_and_the_server_is_alive(own_redis, make_stack) -> None:
    stack = await make_stack(workers=0, redis_url=f"redis://127.0.0.1:{own_redis.port}/0")
    job = await initiate(stack.stub, SMALL_IDS[:1])
    await asyncio.to_thread(own_redis.stop)
    url = f"http://127.0.0.1:{stack.server.http_port}/v1/download/{job.job_id}/file"
    request = urllib.request.Request(url, headers=dict(credentials.bearer(credentials.TOKEN)))
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=60)
    assert refused.value.code == 503
    body = json.loads(refused.value.read())
    assert body == {
        "code": grpc.StatusCode.UNAVAILABLE.value[0],
        "message": "the job store (Redis) is unreachable; retry shortly",
    }
    live = f"http://127.0.0.1:{stack.server.http_port}/livez"
    with await asyncio.to_thread(urllib.request.urlopen, live, timeout=10) as reply:
        assert reply.status == 200, "alive without Redis: a liveness probe must not restart it for Redis's sake"
    await asyncio.to_thread(own_redis.start)
