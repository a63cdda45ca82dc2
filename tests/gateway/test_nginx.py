"""The same checks through Debian's nginx (gateway/nginx.conf) in front of Envoy."""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc
import pytest

from devstack.processes import free_port
from devstack.services import start_nginx
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from tests import credentials
from tests.conftest import SMALL_IDS
from tests.helpers import check_archive, initiate, wait_done
from tests.web_clients import grpc_web, rest, sse


@dataclass
class Nginx:
    http_port: int
    grpc_port: int


def _start(gateway, work_dir, edit=None):
    reserved: set[int] = set()
    http_port, grpc_port = free_port(reserved), free_port(reserved)
    proc = start_nginx(gateway.port, http_port, grpc_port, work_dir, work_dir / "logs", edit)
    return proc, Nginx(http_port, grpc_port)


@pytest.fixture(scope="module")
def nginx(gateway, work_dir):
    proc, ports = _start(gateway, work_dir)
    yield ports
    proc.stop()


async def test_native_grpc_through_nginx(nginx) -> None:
    async with credentials.channel(f"127.0.0.1:{nginx.grpc_port}") as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        job = await initiate(stub, SMALL_IDS[:2])
        done = await wait_done(stub, job.job_id)
        check_archive(done, SMALL_IDS[:2])
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetStatus(pb.GetStatusRequest(job_id="nope"))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_rest_and_sse_through_nginx_arrive_as_sent(nginx) -> None:
    status, headers, created = rest(nginx.http_port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:3]})
    assert status == 200 and "grpc-status" not in headers
    reply = sse(nginx.http_port, f"/v1/download/{created['job']['jobId']}/events")
    arrivals = [at for at, _ in reply.events]
    assert reply.events[-1][1]["job"]["state"] == "JOB_STATE_COMPLETED"
    assert arrivals[-1] - arrivals[0] > 1.0, "events trickle in, nginx does not buffer them"
    assert sum(1 for at in arrivals if at - arrivals[0] < 1.0) >= 2


def test_rest_errors_through_nginx(nginx) -> None:
    status, _, body = rest(nginx.http_port, "POST", "/v1/download/initiate", {"file_ids": [100]})
    assert status == 400 and "file_ids[0]" in body["message"]
    status, _, _ = rest(nginx.http_port, "GET", "/v1/download/status/00000000-0000-4000-8000-000000000000")
    assert status == 404


def test_grpc_web_stream_through_nginx(nginx) -> None:
    created = grpc_web(nginx.http_port, "InitiateDownload", pb.InitiateDownloadRequest(file_ids=SMALL_IDS[:2]))
    job = pb.InitiateDownloadResponse.FromString(created.messages[0][1]).job
    watched = grpc_web(nginx.http_port, "WatchProgress", pb.WatchProgressRequest(job_id=job.job_id))
    assert watched.grpc_status == 0
    arrivals = [at for at, _ in watched.messages]
    assert arrivals[-1] - arrivals[0] > 1.0


async def test_heartbeats_outlast_short_nginx_read_timeouts(gateway, work_dir) -> None:
    """With every read timeout cut to 1 s, a 2 s job still streams to the end: heartbeats (0.3 s)
    reset nginx's timer, as they do for the real 60 s."""
    proc, short = _start(gateway, work_dir, lambda text: re.sub(r"_read_timeout \d+s", "_read_timeout 1s", text))
    try:
        _, _, created = rest(short.http_port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:1]})
        reply = sse(short.http_port, f"/v1/download/{created['job']['jobId']}/events")
        assert reply.events[-1][1]["job"]["state"] == "JOB_STATE_COMPLETED"
        async with credentials.channel(f"127.0.0.1:{short.grpc_port}") as channel:
            stub = pb_grpc.DownloadServiceStub(channel)
            done = await wait_done(stub, (await initiate(stub, SMALL_IDS[:1])).job_id)
            assert done.state == pb.JOB_STATE_COMPLETED
    finally:
        proc.stop()
