"""`make deploy-up` / `make deploy-down`: the Kubernetes manifests run on this machine with podman.

    python -m devstack.deploy up     Redis and S3 as `make run` starts them (or the ones already
                                     running), then the server, workers and Envoy as containers
                                     (`podman kube play` of deploy/kubernetes's local overlay);
                                     returns once Envoy answers on ENVOY_PORT (8080), printing the key.
                                     With REDIS_SENTINELS set, Redis is optional/redis-sentinel.yaml
                                     instead: three nodes, each a sentinel at one of those addresses
                                     (on this machine) and Redis 20000 ports below it
    python -m devstack.deploy down   removes every container and pod it made, stops the Redis and
                                     S3 it started, and waits until the ports are free

Same settings and data directory as `make run`; the two cannot run at once (same ports).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2

from devstack.__main__ import Stack
from devstack.kube import local_manifests, local_sentinel_redis
from devstack.processes import port_open
from devstack.sentinel import primary_port
from devstack.services import ROOT
from jobs.logs import setup_logging
from jobs.settings import Settings
from server.servicer import SERVICE_NAME

log = logging.getLogger("devstack.deploy")
POD_PREFIX = "longhaul-"  # kube play names a Deployment's pod "{name}-pod-0"
PODMAN_ENV = os.environ | {"CONTAINERS_CONF": str(ROOT / "deploy" / "containers.conf")}


class Deployment:
    def __init__(self, data_dir: Path, envoy_port: int, envoy_admin_port: int, workers: int) -> None:
        self.data_dir = data_dir
        self.dir = data_dir / "deploy"
        self.manifest = self.dir / "longhaul.yaml"
        self.redis_manifest = self.dir / "redis.yaml"
        self.pids = self.dir / "pids.json"
        self.envoy_port = envoy_port
        self.envoy_admin_port = envoy_admin_port
        self.workers = workers

    def up(self, settings: Settings) -> Stack:
        stack = Stack(settings, self.data_dir, self.workers, self.envoy_port, self.envoy_admin_port)
        stack.prepare()
        self.dir.mkdir(parents=True, exist_ok=True)
        # Redis and S3 started here outlive this command (their own sessions); `down` stops them.
        self.pids.write_text(json.dumps({proc.name: proc.pid for proc in stack.started}))
        assets = self.dir / "assets"
        assets.mkdir(exist_ok=True)
        assets.chmod(0o777)  # written by the init step's user, read by Envoy's
        if stack.settings.redis_sentinels:
            self._sentinel_redis(stack.settings.sentinel_addresses)
        documents, init_runs = local_manifests(
            stack.settings, self.envoy_port, self.envoy_admin_port, self.workers, assets
        )
        self.manifest.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        for run in init_runs:
            podman(*run)
        podman("kube", "play", "--replace", str(self.manifest))
        self._wait_ready()
        return stack

    def _sentinel_redis(self, sentinels: list[tuple[str, int]], timeout_s: float = 60) -> None:
        """Starts the Redis nodes and their sentinels first, and waits until the sentinels agree on a
        primary, so that the service starts against a Redis that is there."""
        for index in range(len(sentinels)):
            volume = self.dir / f"redis-{index}"
            volume.mkdir(exist_ok=True)
            volume.chmod(0o777)  # written by the redis image's user
        self.redis_manifest.write_text(yaml.safe_dump_all(local_sentinel_redis(sentinels, self.dir), sort_keys=False))
        podman("kube", "play", "--replace", str(self.redis_manifest))
        deadline = time.monotonic() + timeout_s
        while primary_port([port for _, port in sentinels]) is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"the sentinels named no primary within {timeout_s:.0f} s:\n{podman('pod', 'ps', capture=True)}")
            time.sleep(0.2)

    def _wait_ready(self, timeout_s: float = 120) -> None:
        if not wait_serving(self.envoy_port, timeout_s):
            pods = podman("pod", "ps", capture=True)
            raise SystemExit(f"the deployment was not ready within {timeout_s:.0f} s:\n{pods}")

    def down(self) -> None:
        for manifest in (self.manifest, self.redis_manifest):
            if manifest.exists():
                podman("kube", "down", str(manifest), check=False)
                manifest.unlink()
        # Whatever a failed `up` or `down` left: every pod of ours, by name.
        pods = podman("pod", "ps", "--quiet", "--filter", f"name=^{POD_PREFIX}", capture=True).split()
        if pods:
            podman("pod", "rm", "--force", *pods)
        if self.pids.exists():
            for pid in json.loads(self.pids.read_text()).values():
                _stop(pid)
            self.pids.unlink()
        deadline = time.monotonic() + 30
        while any(port_open(port) for port in (self.envoy_port, self.envoy_admin_port)):
            if time.monotonic() > deadline:
                raise SystemExit(f"ports {self.envoy_port}/{self.envoy_admin_port} are still taken")
            time.sleep(0.2)


def wait_serving(envoy_port: int, timeout_s: float) -> bool:
    """Whether, within `timeout_s`, a health check through Envoy reaches a server that says SERVING
    (so Envoy has the server in rotation, and the server has Redis)."""
    deadline = time.monotonic() + timeout_s
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    with grpc.insecure_channel(f"127.0.0.1:{envoy_port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while time.monotonic() < deadline:
            try:
                if check(request, timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    return False


def podman(*args: str, check: bool = True, capture: bool = False) -> str:
    result = subprocess.run(["podman", *args], env=PODMAN_ENV, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"podman {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout if capture else ""


def _stop(pid: int) -> None:
    """SIGTERM to the process group (Redis writes its AOF), SIGKILL after 10 s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    setup_logging("devstack")
    if argv not in (["up"], ["down"]):
        print(__doc__, file=sys.stderr)
        return 2
    data_dir = Path(os.environ.get("LONGHAUL_DATA_DIR", ROOT / ".data")).resolve()
    deployment = Deployment(
        data_dir,
        envoy_port=int(os.environ.get("ENVOY_PORT", "8080")),
        envoy_admin_port=int(os.environ.get("ENVOY_ADMIN_PORT", "9901")),
        workers=int(os.environ.get("WORKER_PROCESSES", "2")),
    )
    if argv == ["down"]:
        deployment.down()
        return 0
    stack = deployment.up(Settings.from_env())
    print(stack.banner().replace("Ctrl-C stops everything.", "`make deploy-down` stops everything."), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
