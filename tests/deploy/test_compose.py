"""deploy/compose.yaml run with podman-compose: Redis, SeaweedFS, the server, two workers and Envoy in
containers on their own network, finding each other by service name. The public images are replaced
by the stand-ins `make images` builds (the file takes its images from the environment)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devstack.deploy import PODMAN_ENV, wait_serving
from devstack.processes import free_port, port_open
from devstack.seed import seed_sources
from devstack.services import ROOT
from jobs.connections import s3_client_kwargs, s3_session
from jobs.settings import Settings
from longhaul.download.v1 import download_pb2 as pb
from longhaul_client import Client
from tests.conftest import SMALL_IDS
from tests.helpers import check_archive
from tests.web_clients import rest, sse

PODMAN_COMPOSE = str(Path(sys.executable).parent / "podman-compose")
# Jobs of a second, as an override file (the way compose users change a service) sets them.
SHORT_JOBS = {"environment": {"DOWNLOAD_DELAY_MIN_MS": "1000", "DOWNLOAD_DELAY_MAX_MS": "1000"}}


class Composed:
    def __init__(self, project: str, port: int, key: str) -> None:
        self.project = project
        self.port = port
        self.key = key

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], env=PODMAN_ENV, capture_output=True, text=True, timeout=120)
    assert not check or result.returncode == 0, result.stderr
    return result


def compose(files: list[str], project: str, env: dict[str, str], *args: str) -> None:
    command = [PODMAN_COMPOSE, *(f"--file={file}" for file in files), f"--project-name={project}", *args]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def composed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Composed]:
    reserved: set[int] = set()
    port = free_port(reserved)
    s3_port = free_port(reserved)
    here = tmp_path_factory.mktemp("compose")
    keys = here / "api-keys"
    created = subprocess.run(
        [sys.executable, "-m", "server.apikeys", "--file", str(keys), "create", "compose"],
        capture_output=True, text=True, check=True,
    )
    keys.chmod(0o644)  # the containers' user reads it; it holds only hashes of the keys
    project = f"longhaul-compose-{os.getpid()}"
    override = here / "short-jobs.yaml"
    override.write_text(yaml.safe_dump({"services": {"worker-1": SHORT_JOBS, "worker-2": SHORT_JOBS}}))
    files = [str(ROOT / "deploy" / "compose.yaml"), str(override)]
    env = PODMAN_ENV | {
        "LONGHAUL_PORT": str(port),
        "S3_PORT": str(s3_port),
        "LONGHAUL_API_KEYS": str(keys),
        "ENVOY_IMAGE": "localhost/envoy:dev",
        "REDIS_IMAGE": "localhost/redis:dev",
        "SEAWEEDFS_IMAGE": "localhost/seaweedfs:dev",
    }
    try:
        compose(files, project, env, "up", "--detach")
        assert wait_serving(port, timeout_s=120), podman("ps", "--all").stdout
        asyncio.run(_seed(s3_port))
        yield Composed(project, port, created.stdout.strip())
    finally:
        compose(files, project, env, "down", "--volumes")
    label = f"label=io.podman.compose.project={project}"
    assert podman("ps", "--all", "--quiet", "--filter", label).stdout.split() == []
    assert podman("volume", "ls", "--quiet", "--filter", label).stdout.split() == []
    assert [p for p in (port, s3_port) if port_open(p)] == []


def restarted(container: str) -> bool:
    count, running = podman("inspect", "--format", "{{.RestartCount}} {{.State.Running}}", container).stdout.split()
    return int(count) >= 1 and running == "true"


async def _seed(s3_port: int) -> None:
    settings = Settings(s3_endpoint=f"http://127.0.0.1:{s3_port}")
    async with s3_session().client("s3", **s3_client_kwargs(settings)) as s3:
        await seed_sources(s3, settings, SMALL_IDS)


def test_a_download_end_to_end_through_the_composed_services(composed: Composed) -> None:
    with Client(f"127.0.0.1:{composed.port}", token=composed.key) as client:
        done = client.wait(client.initiate(SMALL_IDS[:3]).job_id)
    check_archive(done, SMALL_IDS[:3])  # fetched from SeaweedFS's published port, as a user would

    status, _, created = rest(composed.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[3:5]}, token=composed.key)
    assert status == 200, created
    events = sse(composed.port, f"/v1/download/{created['job']['jobId']}/events", timeout_s=60, token=composed.key).events
    assert events[-1][1]["job"]["state"] == "JOB_STATE_COMPLETED"


@pytest.mark.parametrize("service", ["redis", "longhaul-server", "worker-1", "worker-2"])
def test_each_health_check_passes_in_its_container(composed: Composed, service: str) -> None:
    # Podman runs health checks from systemd timers, which this machine does not have; this is the
    # command such a timer (or Docker's engine) runs.
    result = podman("healthcheck", "run", composed.container(service), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_jobs_live_in_redis_with_an_append_only_file_on_its_volume(composed: Composed) -> None:
    redis = composed.container("redis")
    assert podman("exec", redis, "redis-cli", "config", "get", "appendonly").stdout.split() == ["appendonly", "yes"]
    listpack = podman("exec", redis, "redis-cli", "config", "get", "hash-max-listpack-value").stdout.split()
    assert listpack == ["hash-max-listpack-value", "1024"], "a job's record stays in Redis's compact encoding"
    mounts = podman("inspect", "--format", "{{range .Mounts}}{{.Name}}:{{.Destination}} {{end}}", redis).stdout.split()
    assert f"{composed.project}_redis-data:/data" in mounts


def test_a_worker_that_exits_is_started_again_by_its_restart_policy(composed: Composed) -> None:
    worker = composed.container("worker-1")
    # SIGTERM from outside: the worker hands its jobs back and exits. (A SIGKILL sent by `podman kill`
    # counts as the user's stop, which restart policies respect.)
    podman("kill", "--signal", "TERM", worker)
    deadline = time.monotonic() + 30
    while not restarted(worker):
        assert time.monotonic() < deadline, podman("ps", "--all").stdout
        time.sleep(0.2)
    with Client(f"127.0.0.1:{composed.port}", token=composed.key) as client:
        done = client.wait(client.initiate(SMALL_IDS[5:7]).job_id)
    assert done.state == pb.JOB_STATE_COMPLETED
