"""Three server processes and four workers behind Envoy; one server is SIGKILLed while watch streams
are open on every server. New calls go to the other two, every watcher resumes from its last seq
through Envoy, and every job completes with its archive."""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc

from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from tests.conftest import SMALL_IDS
from tests.credentials import channel
from tests.gateway.conftest import start_gateway, stop_gateway
from tests.helpers import check_archive, follow_resuming

JOBS_BEFORE, JOBS_AFTER = 24, 12
# What a stream on the killed server ends with: Envoy resets it (INTERNAL "Stream removed"), as the
# Python client expects (it resumes on these too).
DROPPED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}


async def test_a_server_killed_under_open_streams_loses_no_watcher_and_no_call(base_settings, work_dir) -> None:
    gateway = start_gateway(base_settings, work_dir, replicas=3, workers=4, delay_min_ms=1_500, delay_max_ms=2_500)
    rng = random.Random(5)
    try:
        async with channel(gateway.address) as ch:
            stub = pb_grpc.DownloadServiceStub(ch)
            requested: dict[str, list[int]] = {}

            async def create() -> str:
                ids, request_id = rng.sample(SMALL_IDS, rng.randint(1, 3)), uuid.uuid4().hex
                reply = await stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=ids, request_id=request_id), timeout=10)
                requested[reply.job.job_id] = ids
                return reply.job.job_id

            before = [await create() for _ in range(JOBS_BEFORE)]
            watchers = [asyncio.create_task(follow_resuming(stub, job_id, DROPPED)) for job_id in before]
            await asyncio.sleep(0.5)  # every stream open, spread over the three servers
            gateway.servers[0].kill()
            # Envoy sends the calls that find the dead server to another one (connect-failure retries).
            after = [await create() for _ in range(JOBS_AFTER)]
            watchers += [asyncio.create_task(follow_resuming(stub, job_id, DROPPED)) for job_id in after]
            results = await asyncio.wait_for(asyncio.gather(*watchers), 60)
        for job_id, (seqs, final, _) in zip(before + after, results, strict=True):
            assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"{job_id}: gap or repeat in {seqs}"
            check_archive(final, requested[job_id])
        assert sum(resumed for _, _, resumed in results) > 0, "no stream was on the killed server: the run proved nothing"
    finally:
        stop_gateway(gateway)
