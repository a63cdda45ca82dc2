"""What observing costs: InitiateDownload and GetStatus on a server that counts every gRPC call (the
default) beside one that does not (GRPC_METRICS=0), back to back within each round, at 64 calls in
flight. The job metrics (a few counter increments per change of a job) are on in both: they cannot be
turned off, and cost a few microseconds per job.
"""

from __future__ import annotations

import grpc

from bench.env import BenchEnv
from bench.loadgen import UnaryLoad, unary
from bench.report import Row, median
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc

SERVICE = "/longhaul.download.v1.DownloadService"
IN_FLIGHT = 64
LOAD_PROCESSES = 2


def run(env: BenchEnv, duration_s: float, rounds: int) -> list[Row]:
    servers = {"on": env.start_server()[1], "off": env.start_server(grpc_metrics=0)[1]}
    initiate = pb.InitiateDownloadRequest(file_ids=[70000, 70007, 70014]).SerializeToString()
    statuses = {}
    for name, address in servers.items():
        with grpc.insecure_channel(address) as channel:
            job = pb_grpc.DownloadServiceStub(channel).InitiateDownload(
                pb.InitiateDownloadRequest(file_ids=[70000]), metadata=env.metadata
            ).job
        statuses[name] = pb.GetStatusRequest(job_id=job.job_id).SerializeToString()

    def rate(address: str, method: str, request: bytes) -> float:
        calls, _, errors = unary(UnaryLoad(address, f"{SERVICE}/{method}", request, IN_FLIGHT, duration_s, env.metadata), LOAD_PROCESSES)
        if errors:
            raise RuntimeError(f"{errors} calls of {method} failed during the benchmark")
        return calls

    figures: dict[str, list[float]] = {}
    for round_ in range(rounds):
        # Which server goes first alternates, so that neither always has the warmer machine.
        order = ["on", "off"] if round_ % 2 == 0 else ["off", "on"]
        for method in ("InitiateDownload", "GetStatus"):
            measured = {}
            for name in order:
                request = initiate if method == "InitiateDownload" else statuses[name]
                measured[name] = rate(servers[name], method, request)
            figures.setdefault(f"{method} on", []).append(measured["on"])
            figures.setdefault(f"{method} off", []).append(measured["off"])
            figures.setdefault(f"{method} ratio", []).append(measured["on"] / measured["off"])

    rows = []
    for method in ("InitiateDownload", "GetStatus"):
        ratios = figures[f"{method} ratio"]
        spread = f" (median of {len(ratios)}: {min(ratios):.0%}-{max(ratios):.0%})" if len(ratios) > 1 else ""
        rows.append(
            Row(
                f"{method}/s with gRPC metrics, {IN_FLIGHT} in flight, direct",
                f"{median(figures[f'{method} on']):,.0f}/s",
                f"metrics off {median(figures[f'{method} off']):,.0f}/s",
                f"{median(ratios):.0%}{spread}",
                ">= 95 %",
                median(ratios) >= 0.95,
            )
        )
    return rows
