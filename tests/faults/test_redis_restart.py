"""Redis restarts (persisted with AOF, as in production) while a job runs and a watcher is open."""

from __future__ import annotations

import asyncio

import grpc

from devstack.processes import free_port
from devstack.services import start_redis
from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import SMALL_IDS
from tests.helpers import check_archive, initiate, wait_done


async def test_server_and_workers_ride_out_a_redis_restart(make_stack, base_settings, tmp_path) -> None:
    port = free_port()
    redis = start_redis(port, tmp_path / "redis", tmp_path / "logs", appendonly=True)
    try:
        stack = await make_stack(redis_url=f"redis://127.0.0.1:{port}/0", delay_min_ms=4_000, delay_max_ms=4_000)
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
                    await asyncio.sleep(0.3)

        watcher = asyncio.create_task(watch_with_resume())
        await asyncio.sleep(1.0)
        redis.stop()  # SIGTERM: Redis writes its AOF and exits
        await asyncio.sleep(1.0)
        redis = start_redis(port, tmp_path / "redis", tmp_path / "logs", appendonly=True)

        final = await asyncio.wait_for(watcher, 60)
        assert final.state == pb.JOB_STATE_COMPLETED, final
        check_archive(final, SMALL_IDS[:3])
        seqs = [m.seq for m in seen]
        assert seqs == sorted(set(seqs)), "nothing twice, in order"
        other_done = await wait_done(stack.stub, other.job_id, timeout_s=60)
        assert other_done.state == pb.JOB_STATE_COMPLETED, "no job was lost across the restart"
    finally:
        redis.stop()
