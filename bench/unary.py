"""Unary calls: InitiateDownload and GetStatus against a bare grpc.aio call (health Check) on the same
server process, at 64 calls in flight; and GetStatus latency through Envoy against direct, with one
call in flight and with one per load process.

GetStatus is measured twice: as pollers see it (the same job read again and again: from the server's
record cache after the first read) and on a second server with the cache off (every call reads Redis:
what a job that changed since the last poll costs).

Each figure is measured in `rounds` rounds, ours and its baseline back to back within a round, and the
median of the rounds' ratios is reported: on a shared machine a single 5-second pair swings by ±15 %.
"""

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


def run(env: BenchEnv, duration_s: float, rounds: int) -> list[Row]:
    (_, address), (_, uncached_address) = env.start_servers([({}, {}), ({}, {"record_cache_size": 0})])
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        job = stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=[70000]), metadata=env.metadata).job
    status = (f"{SERVICE}/GetStatus", pb.GetStatusRequest(job_id=job.job_id).SerializeToString())
    initiate = (f"{SERVICE}/InitiateDownload", pb.InitiateDownloadRequest(file_ids=[70000, 70007, 70014]).SerializeToString())
    envoy = env.start_envoy(address)

    def measure(
        target: str, method: str, request: bytes, in_flight: int = IN_FLIGHT, processes: int = LOAD_PROCESSES
    ) -> tuple[float, list[float]]:
        load = UnaryLoad(target, method, request, in_flight, duration_s, env.metadata)
        rate, latencies, errors = unary(load, processes)
        if errors:
            raise RuntimeError(f"{errors} calls of {method} failed during the benchmark")
        return rate, latencies

    figures: dict[str, list[float]] = {}
    initiate_latencies: list[float] = []

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    for _ in range(rounds):
        bare, _ = measure(address, *CHECK)
        initiated, latencies = measure(address, *initiate)
        initiate_latencies += latencies
        polled, _ = measure(address, *status)
        uncached_bare, _ = measure(uncached_address, *CHECK)
        uncached, _ = measure(uncached_address, *status)
        # Latency twice: one call at a time (the hop itself), and one per load process (the load
        # processes, server and Envoy then contend for the two cores).
        alone = median(measure(address, *status, in_flight=1, processes=1)[1])
        proxied_alone = median(measure(envoy, *status, in_flight=1, processes=1)[1])
        direct = median(measure(address, *status, in_flight=LOAD_PROCESSES)[1])
        proxied = median(measure(envoy, *status, in_flight=LOAD_PROCESSES)[1])
        for name, value in (
            ("bare", bare), ("initiate", initiated), ("status", polled), ("uncached bare", uncached_bare),
            ("uncached", uncached), ("alone", alone), ("envoy alone", proxied_alone), ("direct", direct),
            ("envoy", proxied), ("envoy alone ratio", proxied_alone / alone), ("initiate ratio", initiated / bare),
            ("status ratio", polled / bare), ("uncached ratio", uncached / uncached_bare), ("envoy ratio", proxied / direct),
        ):
            note(name, value)

    m = {name: median(values) for name, values in figures.items()}

    def ratio(name: str, as_text: str = "{:.0%}") -> str:
        values = figures[name]
        text = as_text.format(median(values))
        if len(values) > 1:
            text += f" (median of {len(values)}: {as_text.format(min(values))}-{as_text.format(max(values))})"
        return text
    return [
        Row(
            f"InitiateDownload/s, {IN_FLIGHT} in flight, direct",
            f"{m['initiate']:,.0f}/s (p99 {percentile(initiate_latencies, 0.99) * 1000:.1f} ms)",
            f"health Check {m['bare']:,.0f}/s",
            ratio("initiate ratio"),
            ">= 70 %",
            m["initiate ratio"] >= 0.7,
        ),
        Row(
            f"GetStatus/s, {IN_FLIGHT} in flight, direct (a polled job: record cache)",
            f"{m['status']:,.0f}/s",
            f"health Check {m['bare']:,.0f}/s",
            ratio("status ratio"),
            ">= 90 %",
            m["status ratio"] >= 0.9,
        ),
        Row(
            f"GetStatus/s, {IN_FLIGHT} in flight, direct, record cache off (a Redis read per call)",
            f"{m['uncached']:,.0f}/s",
            f"health Check {m['uncached bare']:,.0f}/s (that server)",
            ratio("uncached ratio"),
            "report",
        ),
        Row(
            "GetStatus p50 through Envoy, one call in flight",
            f"{m['envoy alone'] * 1000:.2f} ms",
            f"direct {m['alone'] * 1000:.2f} ms",
            ratio("envoy alone ratio", "{:.2f} x"),
            "<= 1.5 x",
            m["envoy alone ratio"] <= 1.5,
        ),
        Row(
            f"GetStatus p50 through Envoy, {LOAD_PROCESSES} in flight (one per load process: the cores saturated)",
            f"{m['envoy'] * 1000:.2f} ms",
            f"direct {m['direct'] * 1000:.2f} ms",
            ratio("envoy ratio", "{:.2f} x"),
            "<= 1.5 x",
            m["envoy ratio"] <= 1.5,
        ),
    ]
