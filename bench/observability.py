"""What observing costs: InitiateDownload and GetStatus on a server that counts every gRPC call (the
default) beside one that does not (GRPC_METRICS=0), back to back within each round, at 64 calls in
flight. The job metrics (a few counter increments per change of a job) are on in both: they cannot be
turned off.

Two figures per call: the rate, and the server's CPU time per call (from /proc). Both swing by about
±10 % from round to round on a shared 2-core machine, even between two identical servers: read the
medians with their spread.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from bench.env import BenchEnv
from bench.loadgen import UnaryLoad, unary
from bench.report import Row, median
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc

SERVICE = "/longhaul.download.v1.DownloadService"
IN_FLIGHT = 64
LOAD_PROCESSES = 2
METHODS = ("InitiateDownload", "GetStatus")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(env: BenchEnv, duration_s: float, rounds: int) -> list[Row]:
    servers = {"on": env.start_server(), "off": env.start_server(grpc_metrics=0)}
    requests: dict[str, dict[str, bytes]] = {method: {} for method in METHODS}
    for name, (_, address) in servers.items():
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.DownloadServiceStub(channel)
            job = stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=[70000]), metadata=env.metadata).job
        requests["GetStatus"][name] = pb.GetStatusRequest(job_id=job.job_id).SerializeToString()
        requests["InitiateDownload"][name] = pb.InitiateDownloadRequest(file_ids=[70000, 70007, 70014]).SerializeToString()

    def measure(name: str, method: str) -> tuple[float, float]:
        """(calls per second, server CPU seconds per call)."""
        proc, address = servers[name]
        load = UnaryLoad(address, f"{SERVICE}/{method}", requests[method][name], IN_FLIGHT, duration_s, env.metadata)
        before = cpu_seconds(proc.pid)
        rate, _, errors = unary(load, LOAD_PROCESSES)
        if errors:
            raise RuntimeError(f"{errors} calls of {method} failed during the benchmark")
        return rate, (cpu_seconds(proc.pid) - before) / (rate * duration_s)

    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    for round_ in range(rounds):
        # Which server goes first alternates, so that neither always has the warmer machine.
        order = ["on", "off"] if round_ % 2 == 0 else ["off", "on"]
        for method in METHODS:
            measured = {name: measure(name, method) for name in order}
            (rate_on, cpu_on), (rate_off, cpu_off) = measured["on"], measured["off"]
            note(f"{method} rate on", rate_on)
            note(f"{method} rate off", rate_off)
            note(f"{method} rate ratio", rate_on / rate_off)
            note(f"{method} cpu on", cpu_on)
            note(f"{method} cpu off", cpu_off)
            note(f"{method} cpu cost", cpu_on / cpu_off - 1)

    def spread(values: list[float], as_text: str) -> str:
        if len(values) < 2:
            return ""
        return f" (median of {len(values)}: {as_text.format(min(values))} to {as_text.format(max(values))})"

    rows = []
    for method in METHODS:
        ratios, costs = figures[f"{method} rate ratio"], figures[f"{method} cpu cost"]
        rows += [
            Row(
                f"{method}/s with gRPC metrics, {IN_FLIGHT} in flight, direct",
                f"{median(figures[f'{method} rate on']):,.0f}/s",
                f"metrics off {median(figures[f'{method} rate off']):,.0f}/s",
                f"{median(ratios):.0%}{spread(ratios, '{:.0%}')}",
                ">= 95 %",
                median(ratios) >= 0.95,
            ),
            Row(
                f"{method}: server CPU per call with gRPC metrics",
                f"{median(figures[f'{method} cpu on']) * 1e6:.0f} µs",
                f"metrics off {median(figures[f'{method} cpu off']) * 1e6:.0f} µs",
                f"{median(costs):+.1%}{spread(costs, '{:+.1%}')}",
                "<= +5 %",
                median(costs) <= 0.05,
            ),
        ]
    return rows
