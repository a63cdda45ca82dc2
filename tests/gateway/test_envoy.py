"""Every kind of client through the real Envoy: native gRPC, grpc-web (binary and text), REST/JSON
with SSE, CORS, errors, timeouts — against a server and worker running as their own processes."""

from __future__ import annotations

import asyncio
import copy
import signal
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devstack.processes import free_port
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from tests import credentials
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.gateway.conftest import hcm, start_gateway, stop_gateway
from tests.helpers import check_archive, fetch, initiate, wait_done
from tests.web_clients import grpc_web, rest, sse

# -- native gRPC ----------------------------------------------------------------------------------


async def test_native_grpc_unary_and_stream(gateway) -> None:
    async with credentials.channel(gateway.address) as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        job = await initiate(stub, SMALL_IDS[:2])
        done = await wait_done(stub, job.job_id)
        check_archive(done, SMALL_IDS[:2])
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetStatus(pb.GetStatusRequest(job_id="00000000-0000-4000-8000-000000000000"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


# -- grpc-web -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_grpc_web_unary_and_stream_arrive_one_by_one(gateway, text: bool) -> None:
    created = grpc_web(gateway.port, "InitiateDownload", pb.InitiateDownloadRequest(file_ids=SMALL_IDS[:3]), text)
    assert created.status == 200 and created.grpc_status == 0, created
    assert created.headers["access-control-allow-origin"] == "http://example.test"
    job = pb.InitiateDownloadResponse.FromString(created.messages[0][1]).job

    watched = grpc_web(gateway.port, "WatchProgress", pb.WatchProgressRequest(job_id=job.job_id), text)
    assert watched.grpc_status == 0, watched
    events = [pb.WatchProgressResponse.FromString(data) for _, data in watched.messages]
    assert events[0].type == pb.EVENT_TYPE_SNAPSHOT and events[-1].job.state == pb.JOB_STATE_COMPLETED
    arrivals = [at for at, _ in watched.messages]
    # A 2 s job: messages trickle in over its run, not in one burst at the end.
    assert arrivals[-1] - arrivals[0] > 1.0
    assert sum(1 for at in arrivals if at - arrivals[0] < 1.0) >= 2
    check_archive(events[-1].job, SMALL_IDS[:3])


def test_grpc_web_error_status_and_details(gateway) -> None:
    reply = grpc_web(gateway.port, "InitiateDownload", pb.InitiateDownloadRequest(file_ids=[100]))
    assert reply.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "grpc-status-details-bin" in reply.headers or "grpc-status-details-bin" in reply.trailers


def test_cors_preflight_for_browsers(gateway) -> None:
    status, headers, _ = rest(
        gateway.port,
        "OPTIONS",
        "/longhaul.download.v1.DownloadService/WatchProgress",
        headers={
            "origin": "http://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,x-grpc-web,x-user-agent,authorization",
        },
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == "http://app.example"
    assert {"x-grpc-web", "authorization", "content-type"} <= set(headers["access-control-allow-headers"].split(", "))
    exposed = set(headers["access-control-expose-headers"].split(", "))
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed


# -- REST -----------------------------------------------------------------------------------------


def test_rest_download_from_initiate_to_file(gateway) -> None:
    status, headers, body = rest(
        gateway.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:2]}, {"x-request-id": "req-123"}
    )
    assert status == 200, body
    assert headers["x-request-id"] == "req-123", "a client's request id is echoed"
    assert "grpc-status" not in headers and "grpc-message" not in headers
    job = body["job"]
    assert job["state"] == "JOB_STATE_QUEUED" and job["filesTotal"] == 2
    job_id = job["jobId"]

    status, _, early = rest(gateway.port, "GET", f"/v1/download/{job_id}/file")
    assert status == 409 and early["state"] in ("QUEUED", "RUNNING")

    reply = sse(gateway.port, f"/v1/download/{job_id}/events")
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.events[-1][1]["job"]["state"] == "JOB_STATE_COMPLETED"

    status, headers, status_body = rest(gateway.port, "GET", f"/v1/download/status/{job_id}")
    assert status == 200 and status_body["job"]["state"] == "JOB_STATE_COMPLETED"
    assert headers["x-request-id"], "every response carries a request id"

    status, headers, _ = rest(gateway.port, "GET", f"/v1/download/{job_id}/file")
    assert status == 302
    archive = fetch(headers["location"])
    assert len(archive) == int(status_body["job"]["result"]["sizeBytes"])


def test_rest_check_list_cancel_and_retry(gateway) -> None:
    status, _, body = rest(gateway.port, "POST", "/v1/download/check", {"file_id": SMALL_IDS[0]})
    assert status == 200 and body["available"] is True and body["objectKey"] == f"downloads/{SMALL_IDS[0]}.zip"
    status, _, body = rest(gateway.port, "POST", "/v1/download/check", {"file_id": MISSING_IDS[0]})
    assert status == 200 and body["available"] is False

    _, _, created = rest(gateway.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:1]})
    job_id = created["job"]["jobId"]
    status, _, cancelled = rest(gateway.port, "POST", f"/v1/download/{job_id}:cancel", {})
    assert status == 200 and cancelled["job"]["state"] == "JOB_STATE_CANCELLED"
    status, _, again = rest(gateway.port, "POST", f"/v1/download/{job_id}:cancel", {})
    assert status == 200

    status, _, retried = rest(gateway.port, "POST", f"/v1/download/{job_id}:retry", {"request_id": "rest-retry"})
    assert status == 200 and retried["job"]["jobId"] == job_id and retried["job"]["retries"] == 1, retried
    assert retried["job"]["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_COMPLETED")
    status, _, refused = rest(gateway.port, "POST", f"/v1/download/{job_id}:retry", {})
    assert status == 400 and "cannot be retried" in refused["message"], refused

    status, _, listed = rest(gateway.port, "GET", "/v1/download/jobs?page_size=1")
    assert status == 200 and len(listed["jobs"]) == 1 and listed["nextPageToken"]


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", "/v1/download/initiate", {"file_ids": [100]}, 400),
        ("POST", "/v1/download/initiate", {"file_ids": []}, 400),
        ("POST", "/v1/download/initiate", {"file_ids": "x"}, 400),
        ("POST", "/v1/download/initiate", "{not json", 400),
        ("POST", "/v1/download/check", {"file_id": 5}, 400),
        ("GET", "/v1/download/status/not-a-job", None, 400),
        ("GET", "/v1/download/status/00000000-0000-4000-8000-000000000000", None, 404),
        ("GET", "/v1/download/00000000-0000-4000-8000-000000000000/file", None, 404),
        ("GET", "/v1/download/jobs?bogus=1", None, 400),
        ("GET", "/v1/nothing/here", None, 404),
        ("GET", "/v1/download/jobs?page_size=5000", None, 400),
    ],
)
def test_rest_errors_have_the_right_code_and_a_json_message(gateway, method, path, body, code) -> None:
    status, headers, reply = rest(gateway.port, method, path, body)
    assert status == code, reply
    assert headers["content-type"].startswith("application/json")
    assert isinstance(reply, dict) and reply["message"]
    assert "grpc-status" not in headers


def test_rest_idempotency_conflict_is_409(gateway) -> None:
    rest(gateway.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:1], "request_id": "gw-conflict"})
    status, _, reply = rest(
        gateway.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:2], "request_id": "gw-conflict"}
    )
    assert status == 409 and "gw-conflict" in reply["message"]


def test_sse_resume_with_after_seq(gateway) -> None:
    _, _, created = rest(gateway.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:4]})
    job_id = created["job"]["jobId"]
    first = sse(gateway.port, f"/v1/download/{job_id}/events", until=lambda e: int(e["seq"]) >= 3)
    last_seen = int(first.events[-1][1]["seq"])
    rest_of_it = sse(gateway.port, f"/v1/download/{job_id}/events?after_seq={last_seen}")
    changes = [int(e["seq"]) for _, e in rest_of_it.events if e["type"] != "EVENT_TYPE_HEARTBEAT"]
    final_seq = changes[-1]
    assert changes == list(range(last_seen + 1, final_seq + 1)), "nothing missed, nothing twice"
    assert rest_of_it.events[-1][1]["job"]["state"] == "JOB_STATE_COMPLETED"


def test_health_endpoint(gateway) -> None:
    status, headers, body = rest(gateway.port, "GET", "/health")
    assert status == 200
    assert body == {"status": "healthy", "checks": {"redis": "ok", "storage": "ok"}}


# -- timeouts and failures ------------------------------------------------------------------------


def test_heartbeats_keep_a_stream_alive_past_a_short_idle_timeout(base_settings, work_dir) -> None:
    def short_idle(config: dict) -> None:
        hcm(config)["stream_idle_timeout"] = "1s"

    gateway = start_gateway(base_settings, work_dir, short_idle, delay_min_ms=3_000, delay_max_ms=3_000)
    try:
        # The idle timeout is really 1 s: a request whose body never comes is cut.
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw:
            raw.sendall(
                b"POST /v1/download/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 50\r\n\r\n{"
            )
            started = time.monotonic()
            answer = raw.recv(1024)
            assert answer.startswith(b"HTTP/1.1 408") and 0.8 < time.monotonic() - started < 3

        # A 3 s job watched over SSE and gRPC, with only 0.3 s heartbeats between progress events.
        _, _, created = rest(gateway.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:1]})
        reply = sse(gateway.port, f"/v1/download/{created['job']['jobId']}/events")
        assert reply.events[-1][1]["job"]["state"] == "JOB_STATE_COMPLETED"
        assert reply.events[-1][0] - reply.events[0][0] > 2.0
    finally:
        stop_gateway(gateway)


async def test_more_watchers_than_envoys_default_request_limit(base_settings, work_dir) -> None:
    # Every open watch is a request under way to the cluster; Envoy's default limit (1,024) answered
    # the watchers past it UNAVAILABLE ("upstream overflow").
    watchers = 1_100
    gateway = start_gateway(base_settings, work_dir, delay_min_ms=60_000, delay_max_ms=60_000)
    try:
        async with credentials.channel(gateway.address) as channel:
            stub = pb_grpc.DownloadServiceStub(channel)
            job = await initiate(stub, SMALL_IDS[:1])
            calls = [stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=30) for _ in range(watchers)]
            try:
                firsts = await asyncio.gather(*(call.read() for call in calls), return_exceptions=True)
                refused = [f for f in firsts if not isinstance(f, pb.WatchProgressResponse)]
                assert not refused, f"{len(refused)} of {watchers} watchers refused: {refused[0]}"
            finally:
                for call in calls:
                    call.cancel()
    finally:
        stop_gateway(gateway)


async def test_a_dying_server_gives_clients_a_clear_error(base_settings, work_dir) -> None:
    gateway = start_gateway(base_settings, work_dir, delay_min_ms=60_000, delay_max_ms=60_000)
    try:
        async with credentials.channel(gateway.address) as channel:
            stub = pb_grpc.DownloadServiceStub(channel)
            job = await initiate(stub, SMALL_IDS[:1])
            call = stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=20)
            assert (await call.read()).type == pb.EVENT_TYPE_SNAPSHOT
            gateway.server.kill()
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as error:
                while (await call.read()) is not grpc.aio.EOF:
                    pass
            # Headers were already sent, so Envoy can only reset the stream: gRPC reports that as
            # INTERNAL "Stream removed". Resuming a watch is safe, so clients resume on both.
            assert error.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE or "Stream removed" in error.value.details()
            assert time.monotonic() - started < 5, "an error, not a hang"
    finally:
        stop_gateway(gateway)


def test_sigterm_ends_an_sse_stream_with_an_error_event_naming_the_resume_seq(base_settings, work_dir) -> None:
    gateway = start_gateway(base_settings, work_dir, delay_min_ms=60_000, delay_max_ms=60_000)
    try:
        _, _, created = rest(gateway.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:1]})
        job_id = created["job"]["jobId"]
        sse(gateway.port, f"/v1/download/{job_id}/events", until=lambda e: e["type"] == "EVENT_TYPE_SNAPSHOT")

        def stop_server_soon(event: dict) -> bool:
            if event["type"] == "EVENT_TYPE_SNAPSHOT":
                gateway.server.signal(signal.SIGTERM)
            return event["type"] == "EVENT_TYPE_ERROR"

        reply = sse(gateway.port, f"/v1/download/{job_id}/events", until=stop_server_soon, timeout_s=15)
        error = reply.events[-1][1]
        assert error["type"] == "EVENT_TYPE_ERROR"
        assert error["error"]["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
        assert "after_seq=" in error["error"]["message"]
    finally:
        stop_gateway(gateway)


async def test_with_storage_down_the_api_keeps_serving_and_health_says_degraded(base_settings, work_dir) -> None:
    # Readiness means "can serve calls": status, listing and watching need Redis only, so S3 being
    # down must not take the servers out of Envoy's rotation (jobs wait and retry instead).
    dead_s3 = base_settings.replace(s3_endpoint=f"http://127.0.0.1:{free_port()}")
    gateway = start_gateway(dead_s3, work_dir)
    try:
        status, _, body = rest(gateway.port, "GET", "/health")
        assert status == 200 and body["status"] == "degraded", body
        assert body["checks"]["redis"] == "ok" and body["checks"]["storage"].startswith("error")
        async with credentials.channel(gateway.address) as channel:
            stub = pb_grpc.DownloadServiceStub(channel)
            job = await initiate(stub, SMALL_IDS[:1])
            assert (await stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id), timeout=5)).job.job_id == job.job_id
            listed = await stub.ListDownloads(pb.ListDownloadsRequest(), timeout=5)
            assert [j.job_id for j in listed.jobs] == [job.job_id]
            call = stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=5)
            assert (await call.read()).type == pb.EVENT_TYPE_SNAPSHOT
            call.cancel()
        status, _, reply = rest(gateway.port, "GET", f"/v1/download/status/{job.job_id}")
        assert status == 200 and reply["job"]["jobId"] == job.job_id, reply
    finally:
        stop_gateway(gateway)


async def test_replicas_a_stopping_server_leaves_rotation_and_watches_resume_on_the_other(base_settings, work_dir) -> None:
    gateway = start_gateway(base_settings, work_dir, replicas=2, delay_min_ms=3_000, delay_max_ms=3_000)
    try:
        async with credentials.channel(gateway.address) as channel:
            stub = pb_grpc.DownloadServiceStub(channel)
            job = await initiate(stub, SMALL_IDS[:2])
            last_seq = 0
            gateway.servers[0].signal(signal.SIGTERM)  # one replica goes away mid-job
            while True:  # the client's loop: resume by after_seq on UNAVAILABLE
                try:
                    async for message in stub.WatchProgress(
                        pb.WatchProgressRequest(job_id=job.job_id, after_seq=last_seq), timeout=20
                    ):
                        if message.type != pb.EVENT_TYPE_HEARTBEAT and message.type != pb.EVENT_TYPE_ERROR:
                            assert message.seq > last_seq or message.type == pb.EVENT_TYPE_SNAPSHOT
                            last_seq = message.seq
                            final = message.job
                    break
                except grpc.aio.AioRpcError as error:
                    # The watch was on the stopping replica: it ended with UNAVAILABLE; resume.
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    await asyncio.sleep(0.2)
            assert final.state == pb.JOB_STATE_COMPLETED
            check_archive(final, SMALL_IDS[:2])
            # Unary calls never fail while the replica leaves: unsent requests go to the other one.
            for _ in range(20):
                await stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))
    finally:
        stop_gateway(gateway)


class _AnswersCancelled(grpc.GenericRpcHandler):
    """Every call but health ends CANCELLED before any reply, as gRPC answers calls that reach a
    server that has begun to stop (grpc/grpc#41785), before any handler of ours runs."""

    def service(self, handler_call_details):
        async def cancel(request: bytes, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")

        return grpc.unary_unary_rpc_method_handler(cancel)


async def test_a_call_a_stopping_replica_did_not_run_is_retried_on_another_unless_it_changes_state(
    base_settings, work_dir
) -> None:
    stopping = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("longhaul.download.v1.DownloadService", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, stopping)
    stopping.add_generic_rpc_handlers([_AnswersCancelled()])
    stopping_port = stopping.add_insecure_port("127.0.0.1:0")
    await stopping.start()

    def add_stopping_replica(config: dict) -> None:
        cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "longhaul_grpc")
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        endpoints.append(copy.deepcopy(endpoints[0]))
        endpoints[-1]["endpoint"]["address"]["socket_address"]["port_value"] = stopping_port

    # In a thread: the replica answers Envoy's health checks from this event loop meanwhile.
    gateway = await asyncio.to_thread(start_gateway, base_settings, work_dir, envoy_changes=add_stopping_replica)
    try:
        async with credentials.channel(gateway.address) as channel:
            stub = pb_grpc.DownloadServiceStub(channel)
            # Writes are not repeated (one may have run): once the replica is in rotation, some fail.
            job, cancelled, deadline = None, 0, time.monotonic() + 15
            while job is None or not cancelled:
                assert time.monotonic() < deadline, (
                    "no InitiateDownload failed: none reached that replica, or Envoy repeated them"
                )
                try:
                    job = await initiate(stub, SMALL_IDS[:1])
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.CANCELLED, error
                    cancelled += 1
            # Reads, unary and streaming, are repeated on the other replica: none fails.
            for _ in range(10):
                await stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))
                await stub.ListDownloads(pb.ListDownloadsRequest(page_size=1))
                watch = stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=10)
                assert (await watch.read()).type == pb.EVENT_TYPE_SNAPSHOT
                watch.cancel()
    finally:
        stop_gateway(gateway)
        await stopping.stop(None)
