"""GetStatus of a finished job against a queued one, at 64 calls in flight: what clients polling a
download that is ready cost (each reply carries a presigned URL), direct over gRPC and as REST
through Envoy. The two take turns within each of `rounds` rounds; the median ratio is reported."""

from __future__ import annotations

import asyncio
import time

import grpc

from bench.env import BenchEnv
from bench.loadgen import HttpLoad, UnaryLoad, http, unary
from bench.report import Row, median
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc

STATUS = "/longhaul.download.v1.DownloadService/GetStatus"
IN_FLIGHT = 64
LOAD_PROCESSES = 2


def run(env: BenchEnv, duration_s: float, rounds: int) -> list[Row]:
    _, address = env.start_server()
    envoy = env.start_envoy(address)
    asyncio.run(env.seed([70_000]))
    worker = env.start_worker("finished")
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        finished = stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=[70000]), metadata=env.metadata).job.job_id
        deadline = time.monotonic() + 60
        while stub.GetStatus(pb.GetStatusRequest(job_id=finished), metadata=env.metadata).job.state != pb.JOB_STATE_COMPLETED:
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark's job did not complete within 60 s")
            time.sleep(0.05)
        env.stop(worker)  # so that the next job stays queued
        queued = stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=[70000]), metadata=env.metadata).job.job_id

    def grpc_rate(job_id: str) -> float:
        request = pb.GetStatusRequest(job_id=job_id).SerializeToString()
        rate, _, errors = unary(UnaryLoad(address, STATUS, request, IN_FLIGHT, duration_s, env.metadata), LOAD_PROCESSES)
        return _checked(rate, errors)

    def rest_rate(job_id: str) -> float:
        load = HttpLoad(f"http://{envoy}/v1/download/status/{job_id}", IN_FLIGHT, duration_s, env.metadata)
        rate, _, errors = http(load, LOAD_PROCESSES)
        return _checked(rate, errors)

    rows = []
    for label, rate_of in (("direct over gRPC", grpc_rate), ("REST through Envoy", rest_rate)):
        pairs = [(rate_of(queued), rate_of(finished)) for _ in range(rounds)]
        ratios = [done / waiting for waiting, done in pairs]
        spread = f" (median of {rounds}: {min(ratios):.0%}-{max(ratios):.0%})" if rounds > 1 else ""
        rows.append(
            Row(
                f"GetStatus/s of a COMPLETED job, {IN_FLIGHT} in flight, {label}",
                f"{median([done for _, done in pairs]):,.0f}/s",
                f"a QUEUED job {median([waiting for waiting, _ in pairs]):,.0f}/s",
                f"{median(ratios):.0%}{spread}",
                ">= 90 %",
                median(ratios) >= 0.9,
            )
        )
    return rows


def _checked(rate: float, errors: int) -> float:
    if errors:
        raise RuntimeError(f"{errors} GetStatus calls failed during the benchmark")
    return rate
