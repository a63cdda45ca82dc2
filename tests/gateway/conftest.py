"""A real Envoy (the repository's envoy.yaml, ports changed) in front of a server and a worker running
as their own processes, on the session's Redis and SeaweedFS."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from devstack.processes import ManagedProcess, free_port, port_open
from devstack.services import envoy_config, python_process, start_envoy
from jobs.keys import Keys
from jobs.settings import Settings
from jobs.tenants import tenant_slug
from tests.credentials import BEARER, TENANT

# Jobs long enough to watch, heartbeats frequent enough to test idle timeouts in a second.
GATEWAY_SETTINGS = {"delay_min_ms": 2_000, "delay_max_ms": 2_000, "heartbeat_s": 0.3, "health_check_interval_s": 0.5}


@dataclass
class Gateway:
    settings: Settings
    port: int  # Envoy's public listener
    servers: list[ManagedProcess]
    workers: list[ManagedProcess]
    envoy: ManagedProcess
    upstreams: list[tuple[int, int]]  # each server's (gRPC port, HTTP port)

    @property
    def server(self) -> ManagedProcess:
        return self.servers[0]

    @property
    def worker(self) -> ManagedProcess:
        return self.workers[0]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def wait_healthy(port: int, timeout_s: float = 15) -> None:
    """Until Envoy's health checks have put a server in rotation."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            probe = urllib.request.Request(f"http://127.0.0.1:{port}/v1/download/jobs", headers=dict(BEARER))
            with urllib.request.urlopen(probe, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError("no server became healthy behind Envoy")


def start_gateway(
    base: Settings, work_dir: Path, envoy_changes=None, wait: bool = True, replicas: int = 1, workers: int = 1,
    **changes: object,
) -> Gateway:
    reserved: set[int] = set()
    envoy_port, admin_port = free_port(reserved), free_port(reserved)
    settings = base.replace(redis_prefix=f"gw-{uuid.uuid4().hex[:10]}", **{**GATEWAY_SETTINGS, **changes})
    logs = work_dir / "logs"
    started: list[ManagedProcess] = []
    try:  # a step that fails stops what the earlier ones started, so no process outlives the test
        upstreams = []
        for index in range(replicas):
            grpc_port, http_port = free_port(reserved), free_port(reserved)
            own = settings.replace(grpc_listen=f"127.0.0.1:{grpc_port}", http_listen=f"127.0.0.1:{http_port}")
            server = python_process(f"server-{settings.redis_prefix}-{index}", "server", own.to_env(), logs)
            started.append(server)
            server.wait_until(lambda g=grpc_port, h=http_port: port_open(g) and port_open(h), 30, "serving")
            upstreams.append((grpc_port, http_port))
        for index in range(workers):
            started.append(python_process(f"worker-{settings.redis_prefix}-{index}", "worker", settings.to_env(), logs))
        config = envoy_config(envoy_port, admin_port, upstreams)
        if envoy_changes:
            envoy_changes(config)
        envoy = start_envoy(config, work_dir / "envoy", logs, name=f"envoy-{settings.redis_prefix}")
        started.append(envoy)
        if wait:
            wait_healthy(envoy_port)
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        raise
    return Gateway(settings, envoy_port, started[:replicas], started[replicas:-1], envoy, upstreams)


def stop_gateway(gateway: Gateway) -> None:
    for proc in (gateway.envoy, *gateway.workers, *gateway.servers):
        proc.stop()


@pytest.fixture(scope="module")
def gateway(base_settings: Settings, work_dir: Path):
    started = start_gateway(base_settings, work_dir)
    yield started
    stop_gateway(started)


def hcm(config: dict) -> dict:
    """The HTTP connection manager of envoy.yaml's listener, to change in a test's copy."""
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


@pytest.fixture(scope="module")
def jobs_index(gateway: Gateway):
    """How many jobs the test tenant has: a refused request must leave it unchanged."""
    client = redis.Redis.from_url(gateway.settings.redis_url)
    key = Keys(gateway.settings.redis_prefix).index(tenant_slug(TENANT))
    yield lambda: client.zcard(key)
    client.close()
