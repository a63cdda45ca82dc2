"""The Kubernetes manifests run with `podman kube play` (devstack/deploy.py, `make deploy-up`): real
containers of the images `make images` builds, Envoy's and Redis's included, with Redis as
optional/redis-sentinel.yaml runs it (three nodes with their sentinels). A download end to end through
the containerized Envoy over every protocol; a worker container killed mid-job; the Redis primary's
process killed mid-job; the server container restarted under a watcher; non-root on a read-only root
filesystem; nothing left after deploy-down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.deploy import PODMAN_ENV
from devstack.kube import node_port
from devstack.processes import free_port, port_open
from devstack.sentinel import primary_port
from devstack.services import ROOT
from longhaul.download.v1 import download_pb2 as pb
from longhaul_client import Client
from tests.conftest import SMALL_IDS
from tests.helpers import check_archive
from tests.web_clients import grpc_web, rest, sse


def podman(*args: str) -> str:
    result = subprocess.run(["podman", *args], env=PODMAN_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


class Deployed:
    def __init__(
        self, port: int, key: str, ports: list[int], probe_ports: dict[int | str, int], sentinel_ports: list[int]
    ) -> None:
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.key = key
        self.ports = ports  # every port it listens on
        self.probe_ports = probe_ports  # the manifests' container ports, as the local overlay moved them
        self.sentinel_ports = sentinel_ports

    def client(self) -> Client:
        return Client(self.address, token=self.key)


def deploy(command: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "devstack.deploy", command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    reserved: set[int] = set()
    envoy, admin, grpc_port, http = (free_port(reserved) for _ in range(4))
    sentinels = [free_port(reserved, also_free=(node_port(0),)) for _ in range(3)]  # and each one's Redis node
    s3 = free_port(reserved, also_free=(10000,))
    data_dir = tmp_path_factory.mktemp("deployment")
    env = os.environ | {
        "ENVOY_PORT": str(envoy),
        "ENVOY_ADMIN_PORT": str(admin),
        "GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
        "HTTP_LISTEN": f"127.0.0.1:{http}",
        "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in sentinels),
        "REDIS_WAIT_REPLICAS": "1",
        "S3_ENDPOINT": f"http://127.0.0.1:{s3}",
        "LONGHAUL_DATA_DIR": str(data_dir),
        # Jobs of 3 s; a killed worker's job goes back to the queue within seconds.
        "DOWNLOAD_DELAY_MIN_MS": "3000",
        "DOWNLOAD_DELAY_MAX_MS": "3000",
        "WORKER_LOCK_MS": "2000",
        "WORKER_STALLED_CHECK_MS": "1000",
    }
    banner = deploy("up", env)
    assert "Longhaul is running." in banner and "API key" in banner
    key = (data_dir / "dev-api-key").read_text().strip()
    probe_ports: dict[int | str, int] = {50051: grpc_port, "http": http, "public": envoy}
    nodes = [node_port(port) for port in sentinels]
    deployed = Deployed(envoy, key, [envoy, admin, grpc_port, http, s3, *sentinels, *nodes], probe_ports, sentinels)
    try:
        yield deployed
    finally:
        deploy("down", env)
    # After deploy-down, nothing of it is left: no pod, no container, no port.
    assert podman("pod", "ps", "--quiet", "--filter", "name=^longhaul-").split() == []
    assert podman("ps", "--all", "--quiet", "--filter", "name=^longhaul-").split() == []
    assert [port for port in deployed.ports if port_open(port)] == []


def test_a_download_end_to_end_through_the_containerized_envoy(deployed: Deployed) -> None:
    with deployed.client() as client:
        done = client.wait(client.initiate(SMALL_IDS[:3]).job_id)  # native gRPC
    check_archive(done, SMALL_IDS[:3])

    status, _, created = rest(deployed.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[3:5]}, token=deployed.key)
    assert status == 200, created
    job_id = created["job"]["jobId"]
    events = sse(deployed.port, f"/v1/download/{job_id}/events", timeout_s=60, token=deployed.key).events
    assert events[-1][1]["job"]["state"] == "JOB_STATE_COMPLETED"
    status, headers, _ = rest(deployed.port, "GET", f"/v1/download/{job_id}/file", token=deployed.key)
    assert status == 302 and headers["location"]

    web = grpc_web(deployed.port, "GetStatus", pb.GetStatusRequest(job_id=job_id), token=deployed.key)
    assert web.grpc_status == 0
    reply = pb.GetStatusResponse.FromString(web.messages[0][1])
    assert reply.job.state == pb.JOB_STATE_COMPLETED


def test_a_job_whose_worker_container_is_killed_completes_on_the_other(deployed: Deployed) -> None:
    with deployed.client() as client:
        job = client.initiate(SMALL_IDS[:4])
        deadline = time.monotonic() + 30
        while not (running := client.status(job.job_id)).worker:
            assert time.monotonic() < deadline, running
            time.sleep(0.1)
        # Named after its pod (podman names it longhaul-worker-N-pod-0) and its pid.
        victim = running.worker.split(":")[0]
        podman("kill", f"{victim}-worker")
        done = client.wait(job.job_id)
        assert done.state == pb.JOB_STATE_COMPLETED and not done.worker.startswith(victim), done
        check_archive(done, SMALL_IDS[:4])
    podman("start", f"{victim}-worker")


def test_a_killed_redis_primary_is_replaced_and_its_node_comes_back_as_a_replica(deployed: Deployed) -> None:
    old = primary_port(deployed.sentinel_ports)
    assert old is not None
    node = f"longhaul-redis-{[node_port(port) for port in deployed.sentinel_ports].index(old)}-redis"
    with deployed.client() as client:
        job = client.initiate(SMALL_IDS[:4])  # acknowledged once a replica has it (REDIS_WAIT_REPLICAS)
        # The process dies, not the container stopped by hand: its restart policy starts it again at
        # once, and it must not come back as the primary with only what its disk had.
        os.kill(int(podman("inspect", "--format", "{{.State.Pid}}", node)), signal.SIGKILL)
        done = client.wait(job.job_id)
        check_archive(done, SMALL_IDS[:4])
        new = primary_port(deployed.sentinel_ports)
        assert new not in (None, old)
        body = {"file_ids": SMALL_IDS[4:6]}
        status, _, created = rest(deployed.port, "POST", "/v1/download/initiate", body, token=deployed.key)
        assert status == 200, created
        assert client.wait(created["job"]["jobId"]).state == pb.JOB_STATE_COMPLETED
    deadline = time.monotonic() + 60
    while (role := redis.Redis(port=old, socket_timeout=1).execute_command("ROLE"))[:3] != [b"slave", b"127.0.0.1", new]:
        assert time.monotonic() < deadline, role
        time.sleep(0.2)
    assert int(podman("inspect", "--format", "{{.RestartCount}}", node)) >= 1
    for port in (old, new):  # both roles, the restarted node too, keep records in the compact encoding
        assert redis.Redis(port=port).config_get("hash-max-listpack-value") == {"hash-max-listpack-value": "1024"}
    assert f"starting as a replica of 127.0.0.1:{new}" in podman("logs", node)


def test_a_watch_resumes_across_a_restart_of_the_server_container(deployed: Deployed) -> None:
    with deployed.client() as client:
        job = client.initiate(SMALL_IDS[:6])
        seqs = []
        for event in client.watch(job.job_id):
            seqs.append(event.seq)
            if len(seqs) == 2:
                # Stopped as Kubernetes stops it (SIGTERM: it ends its streams with their last seq),
                # then started again by the pod's restart policy.
                podman("kill", "--signal", "TERM", "longhaul-server-pod-0-server")
        assert event.job.state == pb.JOB_STATE_COMPLETED
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "every event once, in order, across the restart"
    assert int(podman("inspect", "--format", "{{.RestartCount}}", "longhaul-server-pod-0-server")) >= 1


@pytest.mark.parametrize(
    ("container", "uid"),
    [
        ("longhaul-server-pod-0-server", "10001"),
        ("longhaul-worker-2-pod-0-worker", "10001"),
        ("longhaul-envoy-pod-0-envoy", "101"),
        ("longhaul-redis-1-sentinel", "999"),
    ],
)
def test_the_containers_run_as_non_root_on_a_read_only_root_filesystem(deployed: Deployed, container: str, uid: str) -> None:
    assert podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", container).strip() == "true"
    assert podman("exec", container, "/usr/bin/id", "-u").strip() == uid
    touch = ["podman", "exec", container, "/usr/bin/touch", "/written"]
    result = subprocess.run(touch, env=PODMAN_ENV, capture_output=True, text=True)
    assert result.returncode != 0 and "Read-only file system" in result.stderr


def probes(manifest: str, name: str) -> list[tuple[str, dict]]:
    """(kind of probe, probe) for every probe of the container `name` in deploy/kubernetes/`manifest`."""
    workload = next(doc for doc in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / manifest).read_text())
                    if doc["kind"] in ("Deployment", "StatefulSet"))
    (container,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return [(kind, container[kind]) for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in container]


@pytest.mark.parametrize(
    ("manifest", "container"),
    [
        ("server.yaml", "longhaul-server-pod-0-server"),
        ("worker.yaml", "longhaul-worker-1-pod-0-worker"),
        ("gateway.yaml", "longhaul-envoy-pod-0-envoy"),
        ("optional/redis-sentinel.yaml", "longhaul-redis-1-redis"),
        ("optional/redis-sentinel.yaml", "longhaul-redis-1-sentinel"),
    ],
)
def test_every_probe_of_the_manifests_passes_against_the_running_containers(
    deployed: Deployed, manifest: str, container: str
) -> None:
    """Podman runs no probes without systemd: each is run here as the kubelet runs it."""
    checked = []
    for kind, probe in probes(manifest, container.rsplit("-", 1)[1]):  # podman names it {pod}-{name}
        if "exec" in probe:
            podman("exec", container, *probe["exec"]["command"])
        elif "grpc" in probe:
            port = deployed.probe_ports[probe["grpc"]["port"]]
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                request = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
                reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, (kind, probe)
        elif "httpGet" in probe:
            port = deployed.probe_ports[probe["httpGet"]["port"]]
            status, _, _ = rest(port, "GET", probe["httpGet"]["path"], token=None)
            assert 200 <= status < 400, (kind, probe, status)
        else:
            assert port_open(deployed.probe_ports[probe["tcpSocket"]["port"]]), (kind, probe)
        checked.append(kind)
    assert checked, f"{manifest} has probes"
