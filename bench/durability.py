"""What acknowledged-means-replicated costs: InitiateDownload at 64 calls in flight on two servers over
one Redis with one replica (both local), taking turns within each round: the default (answered once
the primary has the job) and REDIS_WAIT_REPLICAS=1 (answered once the replica has it too: a WAIT after
each create, on the connection that wrote). Rate and latency percentiles of each."""

from __future__ import annotations

from bench.env import BenchEnv
from bench.loadgen import UnaryLoad, unary
from bench.report import Row, median, percentile
from devstack.processes import free_port
from devstack.sentinel import wait_for_replicas
from devstack.services import start_redis
from longhaul.download.v1 import download_pb2 as pb

METHOD = "/longhaul.download.v1.DownloadService/InitiateDownload"
IN_FLIGHT = 64
LOAD_PROCESSES = 2


def run(env: BenchEnv, duration_s: float, rounds: int) -> list[Row]:
    primary_port = int(env.settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    replica = start_redis(free_port(), env.work / "replica", env.logs, extra_args=["--replicaof", "127.0.0.1", str(primary_port)])
    env.processes.append(replica)
    wait_for_replicas(primary_port, 1)
    started = env.start_servers([({}, {}), ({}, {"redis_wait_replicas": 1})])
    servers = {"primary": started[0][1], "replicated": started[1][1]}
    request = pb.InitiateDownloadRequest(file_ids=[70000, 70007, 70014]).SerializeToString()
    rates: dict[str, list[float]] = {name: [] for name in servers}
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    for round_ in range(rounds):
        for name in list(servers)[:: 1 if round_ % 2 == 0 else -1]:  # alternate who goes first
            load = UnaryLoad(servers[name], METHOD, request, IN_FLIGHT, duration_s, env.metadata)
            rate, measured, errors = unary(load, LOAD_PROCESSES)
            if errors:
                raise RuntimeError(f"{errors} creates failed on the {name} server")
            rates[name].append(rate)
            latencies[name] += measured

    def figures(name: str) -> str:
        p50, p99 = percentile(latencies[name], 0.5), percentile(latencies[name], 0.99)
        return f"{median(rates[name]):,.0f}/s, p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms"

    ratio = median([r / b for r, b in zip(rates["replicated"], rates["primary"], strict=True)])
    p99_ratio = percentile(latencies["replicated"], 0.99) / percentile(latencies["primary"], 0.99)
    return [
        Row(
            f"InitiateDownload with REDIS_WAIT_REPLICAS=1 (one local replica), {IN_FLIGHT} in flight",
            figures("replicated"),
            f"without: {figures('primary')}",
            f"rate {ratio:.0%}, p99 {p99_ratio:.2f}x",
            "report",
        )
    ]
