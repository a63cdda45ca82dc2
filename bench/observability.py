"""What observing costs: InitiateDownload and GetStatus on four servers, back to back within each
round at 64 calls in flight: the default (per-call gRPC metrics on, tracing off); the same with
tracing on, one trace in ten sampled (OTEL_TRACES_SAMPLER=parentbased_traceidratio, as a busy service
runs it) and every trace sampled, spans exported over OTLP/HTTP to a sink here; and both off
(GRPC_METRICS=0, no OTEL_* settings). The job metrics (a few counter increments per change of a job)
are on in all of them: they cannot be turned off.

Each is compared with "both off" by the server's CPU time per call (from /proc) and by the rate.
Both swing by about ±10 % from round to round on a shared 2-core machine, even between two identical
servers: read the medians with their spread. So the 1-in-10 server is also profiled under the same
load (py-spy, samples taken while a thread holds the GIL): the share of its samples inside
OpenTelemetry and our tracing layer is tracing's cost within that one process, whatever the machine
does meanwhile (an upper bound: gRPC's work outside the GIL is not in the denominator).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc

from bench.env import BenchEnv
from bench.loadgen import UnaryLoad, unary
from bench.report import Row, median
from devstack.processes import free_port
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc

SERVICE = "/longhaul.download.v1.DownloadService"
IN_FLIGHT = 64
LOAD_PROCESSES = 2
METHODS = ("InitiateDownload", "GetStatus")
# name: (what, target on the CPU cost per call; None: reported only)
TRACING_TARGET = 0.15  # of the CPU per call, tracing 1 call in 10
CONFIGS: dict[str, tuple[str, float | None]] = {
    "metrics": ("gRPC metrics on (the default)", 0.05),
    "sampled": ("metrics and tracing on, 1 in 10 sampled", TRACING_TARGET),
    "tracing": ("metrics and tracing on, every call sampled", None),
}


# Frames that are tracing's work: OpenTelemetry's packages and our own span code (the handler a
# span wraps is not: it runs inside `traced`, which is left out for that reason).
_TRACING_FRAMES = ("/opentelemetry/", "server/tracing.py:", "jobs/tracing.py:")
_SPAN_WRAPPER = "traced (/"


def tracing_share(pid: int, load: UnaryLoad, processes: int) -> float:
    """The share of the server's GIL-holding samples spent in tracing, under `load`."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as out:
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--gil", "--full-filenames",
             "--format", "raw", "--rate", "200", "--duration", str(max(int(load.duration_s), 1)), "-o", out.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        unary(load, processes)
        _, error = spy.communicate(timeout=load.duration_s + 30)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy could not profile the server: {error.decode(errors='replace')}")
        total = traced = 0
        for line in out:
            stack, _, count = line.rstrip().rpartition(" ")
            total += int(count)
            frames = [frame for frame in stack.split(";") if _SPAN_WRAPPER not in frame]
            if any(marker in frame for frame in frames for marker in _TRACING_FRAMES):
                traced += int(count)
    return traced / total if total else float("nan")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes the spans and drops them."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def run(env: BenchEnv, duration_s: float, rounds: int) -> list[Row]:
    sink = ThreadingHTTPServer(("127.0.0.1", free_port()), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        return _measure(env, duration_s, rounds, f"http://127.0.0.1:{sink.server_port}")
    finally:
        sink.shutdown()


def _measure(env: BenchEnv, duration_s: float, rounds: int, otlp_endpoint: str) -> list[Row]:
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint}
    sampled = tracing | {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    configs: dict[str, tuple[dict[str, str], dict[str, object]]] = {
        "off": ({}, {"grpc_metrics": 0}),
        "metrics": ({}, {}),
        "sampled": (sampled, {}),
        "tracing": (tracing, {}),
    }
    servers = dict(zip(configs, env.start_servers(list(configs.values())), strict=True))
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

    names = list(servers)
    for round_ in range(rounds):
        # The order rotates, so that no server always has the warmer (or the busier) machine.
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for method in METHODS:
            measured = {name: measure(name, method) for name in order}
            rate_off, cpu_off = measured["off"]
            for name in CONFIGS:
                rate, cpu = measured[name]
                note(f"{method} {name} rate", rate)
                note(f"{method} {name} cpu", cpu)
                note(f"{method} {name} cost", cpu / cpu_off - 1)
                note(f"{method} {name} rate ratio", rate / rate_off)
            note(f"{method} off rate", rate_off)
            note(f"{method} off cpu", cpu_off)

    profiled = {
        method: tracing_share(
            servers["sampled"][0].pid, UnaryLoad(servers["sampled"][1], f"{SERVICE}/{method}", requests[method]["sampled"],
                                                IN_FLIGHT, duration_s, env.metadata), LOAD_PROCESSES)
        for method in METHODS
    }

    def spread(values: list[float]) -> str:
        return f" (median of {len(values)}: {min(values):+.0%} to {max(values):+.0%})" if len(values) > 1 else ""

    rows = []
    for method in METHODS:
        baseline = f"both off {median(figures[f'{method} off rate']):,.0f}/s, {median(figures[f'{method} off cpu']) * 1e6:.0f} µs"
        for name, (what, target) in CONFIGS.items():
            costs = figures[f"{method} {name} cost"]
            rate = median(figures[f"{method} {name} rate"])
            rows.append(
                Row(
                    f"{method}, {what}: server CPU per call, {IN_FLIGHT} in flight",
                    f"{rate:,.0f}/s, {median(figures[f'{method} {name} cpu']) * 1e6:.0f} µs",
                    baseline,
                    f"{median(costs):+.1%} CPU{spread(costs)}; rate {median(figures[f'{method} {name} rate ratio']):.0%}",
                    "report" if target is None else f"<= +{target:.0%}",
                    None if target is None else median(costs) <= target,
                )
            )
    for method, share in profiled.items():
        rows.append(
            Row(
                f"{method}, tracing 1 in 10 sampled: its share of the server's Python CPU (py-spy profile)",
                f"{share:.1%}", "", "", f"<= {TRACING_TARGET:.0%}", share <= TRACING_TARGET,
            )
        )
    return rows
