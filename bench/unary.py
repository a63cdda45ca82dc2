"""Unary calls: InitiateDownload and GetStatus against a bare grpc.aio call (health Check) on the same
server process, at 64 calls in flight; and GetStatus latency through Envoy against direct.

GetStatus is measured twice: as pollers see it (the same job read again and again: from the server's
record cache after the first read) and on a server with the cache off (every call reads Redis: what a
job that changes between two polls costs)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2

from bench.env import BenchEnv
from bench.loadgen import UnaryLoad, unary
from bench.report import Row, median, percentile
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc

SERVICE = "/longhaul.download.v1.DownloadService"
CHECK = ("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest().SerializeToString())
IN_FLIGHT = 64
LOAD_PROCESSES = 2


def run(env: BenchEnv, duration_s: float) -> list[Row]:
    _, address = env.start_server()
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        job = stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=[70000]), metadata=env.metadata).job
    status_request = pb.GetStatusRequest(job_id=job.job_id).SerializeToString()
    initiate_request = pb.InitiateDownloadRequest(file_ids=[70000, 70007, 70014]).SerializeToString()

    def measure(target: str, method: str, request: bytes, in_flight: int = IN_FLIGHT) -> tuple[float, list[float]]:
        load = UnaryLoad(target, method, request, in_flight, duration_s, env.metadata)
        rate, latencies, errors = unary(load, LOAD_PROCESSES)
        if errors:
            raise RuntimeError(f"{errors} calls of {method} failed during the benchmark")
        return rate, latencies

    bare_rate, bare_lat = measure(address, *CHECK)
    initiate_rate, initiate_lat = measure(address, f"{SERVICE}/InitiateDownload", initiate_request)
    status_rate, _ = measure(address, f"{SERVICE}/GetStatus", status_request)
    uncached, uncached_address = env.start_server(record_cache_size=0)
    uncached_bare_rate, _ = measure(uncached_address, *CHECK)
    uncached_rate, _ = measure(uncached_address, f"{SERVICE}/GetStatus", status_request)
    env.stop(uncached)
    envoy = env.start_envoy(address)
    _, direct_lat = measure(address, f"{SERVICE}/GetStatus", status_request, in_flight=LOAD_PROCESSES)
    _, envoy_lat = measure(envoy, f"{SERVICE}/GetStatus", status_request, in_flight=LOAD_PROCESSES)

    initiate_ratio = initiate_rate / bare_rate
    status_ratio = status_rate / bare_rate
    uncached_ratio = uncached_rate / uncached_bare_rate
    latency_ratio = median(envoy_lat) / median(direct_lat)
    return [
        Row(
            f"InitiateDownload/s, {IN_FLIGHT} in flight, direct",
            f"{initiate_rate:,.0f}/s (p99 {percentile(initiate_lat, 0.99) * 1000:.1f} ms)",
            f"health Check {bare_rate:,.0f}/s (p99 {percentile(bare_lat, 0.99) * 1000:.1f} ms)",
            f"{initiate_ratio:.0%}",
            ">= 50 %",
            initiate_ratio >= 0.5,
        ),
        Row(f"GetStatus/s, {IN_FLIGHT} in flight, direct (a polled job: record cache)", f"{status_rate:,.0f}/s",
            f"health Check {bare_rate:,.0f}/s", f"{status_ratio:.0%}", ">= 70 %", status_ratio >= 0.7),
        Row(f"GetStatus/s, {IN_FLIGHT} in flight, direct, record cache off (a Redis read per call)",
            f"{uncached_rate:,.0f}/s", f"health Check {uncached_bare_rate:,.0f}/s (that server)",
            f"{uncached_ratio:.0%}", "report"),
        Row(
            "GetStatus p50 through Envoy (1 call in flight per client process)",
            f"{median(envoy_lat) * 1000:.2f} ms",
            f"direct {median(direct_lat) * 1000:.2f} ms",
            f"{latency_ratio:.2f} x",
            "<= 1.5 x",
            latency_ratio <= 1.5,
        ),
    ]
