"""A throwaway stack for benchmarks: its own Redis and SeaweedFS on free loopback ports, and the
server, workers and Envoy as separate processes, as in production. Nothing is shared with a running
`make run` or with the tests."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.processes import ManagedProcess, free_port, port_open
from devstack.seed import seed_sources
from devstack.services import envoy_config, python_process, start_envoy, start_redis, start_seaweedfs
from jobs.connections import s3_client_kwargs, s3_session
from jobs.settings import Settings
from server.apikeys import entry_line, new_key

# The benchmarks' tenant; its key is made per run.
TENANT = "bench"


@dataclass
class BenchEnv:
    settings: Settings
    work: Path
    token: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)
    redis_proc: ManagedProcess | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def start_server(self, extra_env: dict[str, str] | None = None, **changes: object) -> tuple[ManagedProcess, str]:
        """A server process (with `extra_env`, e.g. OTEL_* settings); returns it and its gRPC address."""
        return self.start_servers([(extra_env or {}, changes)])[0]

    def start_servers(self, configs: list[tuple[dict[str, str], dict[str, object]]]) -> list[tuple[ManagedProcess, str]]:
        """Server processes, one per (extra_env, setting changes), started together (a server takes
        about two seconds to start, mostly imports: one after the other, that added up)."""
        started = []
        for extra_env, changes in configs:
            grpc_port, http_port = free_port(), free_port()
            own = self.settings.replace(grpc_listen=f"127.0.0.1:{grpc_port}", http_listen=f"127.0.0.1:{http_port}", **changes)
            proc = python_process(f"bench-server-{grpc_port}", "server", own.to_env() | extra_env, self.logs)
            self.processes.append(proc)
            started.append((proc, grpc_port, http_port))
        for proc, grpc_port, http_port in started:
            proc.wait_until(lambda g=grpc_port, h=http_port: port_open(g) and port_open(h), 30, "serving")
            wait_serving(f"127.0.0.1:{grpc_port}")
        return [(proc, f"127.0.0.1:{grpc_port}") for proc, grpc_port, _ in started]

    def start_envoy(self, server_address: str) -> str:
        """Envoy (the repository's envoy.yaml) in front of one server; returns its address."""
        return self.start_envoy_with_admin(server_address)[1]

    def start_envoy_with_admin(self, server_address: str, stats_flush_s: float = 0) -> tuple[ManagedProcess, str, str]:
        """The same; returns Envoy's process, its address and its admin API's address. `stats_flush_s`:
        how often Envoy merges its histograms, when they are read (its default is 5 s)."""
        grpc_port = int(server_address.rsplit(":", 1)[1])
        port, admin = free_port(), free_port()
        config = envoy_config(port, admin, [(grpc_port, free_port())])
        if stats_flush_s:
            config["stats_flush_interval"] = f"{stats_flush_s}s"
        proc = start_envoy(config, self.work / "envoy", self.logs)
        self.processes.append(proc)
        wait_serving(f"127.0.0.1:{port}")
        return proc, f"127.0.0.1:{port}", f"127.0.0.1:{admin}"

    async def seed(self, file_ids: list[int]) -> None:
        """The source files of `file_ids` in the stack's S3, for jobs that really run."""
        async with s3_session().client("s3", **s3_client_kwargs(self.settings)) as s3:
            await seed_sources(s3, self.settings, file_ids)

    def start_worker(self, name: str = "worker", module: str = "worker", **changes: object) -> ManagedProcess:
        env = self.settings.replace(worker_name=name, **changes).to_env()
        proc = python_process(f"bench-{name}", module, env, self.logs)
        self.processes.append(proc)
        return proc

    def stop(self, proc: ManagedProcess) -> None:
        proc.stop()
        self.processes.remove(proc)


def wait_serving(address: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)


@contextlib.contextmanager
def bench_env(**changes: object) -> Iterator[BenchEnv]:
    with tempfile.TemporaryDirectory(prefix="longhaul-bench-") as tmp:
        work = Path(tmp)
        redis_port, s3_port = free_port(), free_port(also_free=(10000,))
        redis = start_redis(redis_port, work / "redis", work / "logs")
        key_id, token = new_key()
        (work / "api-keys").write_text(entry_line(key_id, token, TENANT) + "\n")
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            s3_endpoint=f"http://127.0.0.1:{s3_port}",
            delay_min_ms=0,
            delay_max_ms=0,
            api_keys_file=str(work / "api-keys"),
            # Benchmarks start thousands of jobs at once. The rate limit stays on, high enough never
            # to refuse a call, so its Redis round trip is part of every measured call.
            tenant_max_active_jobs=0,
            tenant_requests_per_s=10_000_000,
        ).replace(**changes)
        s3 = start_seaweedfs(
            work / "s3", work / "logs", s3_port, settings.s3_access_key_id, settings.s3_secret_access_key,
            [settings.source_bucket, settings.artifact_bucket],
        )
        env = BenchEnv(settings, work, token, redis_proc=redis)
        try:
            yield env
        finally:
            for proc in reversed(env.processes):
                proc.stop()
            # Their data is thrown away with the directory: no need to wait for a clean shutdown
            # (SeaweedFS takes two seconds over it, a dozen times a run).
            s3.kill()
            redis.kill()
