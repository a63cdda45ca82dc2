"""Traces for real: server and worker processes export over OTLP/HTTP to a receiver in the test, which
decodes what they send with opentelemetry-proto. A download whose call carries a W3C traceparent
yields the server's span in the caller's trace, a worker span for the attempt that links to it and
carries the job id, and S3 spans as children of the attempt."""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
import redis
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devstack.processes import free_port
from devstack.services import envoy_tracing
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from longhaul_client import Client
from tests.clients.test_cli import longhaul
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.credentials import BEARER, TOKEN
from tests.gateway.conftest import Gateway, start_gateway, stop_gateway
from tests.web_clients import rest


class Receiver:
    """An OTLP/HTTP trace endpoint: keeps every span with the service.name of its process."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest.FromString(self.body())
                for resource_spans in request.resource_spans:
                    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        received.extend((attributes.get("service.name", ""), span) for span in scope_spans.spans)
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def body(self) -> bytes:
                """The request's body: Python's exporter sends a length, Envoy's sends chunks."""
                if "content-length" in self.headers:
                    return self.rfile.read(int(self.headers["content-length"]))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk
                self.rfile.readline()  # the CRLF after the last, empty chunk
                return b"".join(chunks)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self.traces_url = f"{self.endpoint}/v1/traces"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def until(self, find, timeout_s: float = 20):
        """Until `find(spans)` returns something (the processes export in batches)."""
        deadline = time.monotonic() + timeout_s
        while not (found := find(self.spans)):
            assert time.monotonic() < deadline, [(service, span.name) for service, span in self.spans]
            time.sleep(0.05)
        return found

    def close(self) -> None:
        self._server.shutdown()


def quick_flush(config: dict) -> None:
    """Envoy's tracer sends its spans every 5 s (or 5 at a time); here every 200 ms."""
    layer = {"tracing.opentelemetry.flush_interval_ms": 200, "tracing.opentelemetry.min_flush_spans": 1}
    config["layered_runtime"] = {"layers": [{"name": "test", "static_layer": layer}]}


@pytest.fixture(scope="module")
def traced(base_settings, work_dir: Path) -> Iterator[tuple[Gateway, Receiver]]:
    receiver = Receiver()
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    os.environ.update(tracing)  # the processes inherit them
    try:
        gateway = start_gateway(
            base_settings, work_dir, envoy_changes=lambda config: quick_flush(envoy_tracing(config, receiver.traces_url)),
            delay_min_ms=500, delay_max_ms=500,
        )
    finally:
        for name in tracing:
            del os.environ[name]
    yield gateway, receiver
    stop_gateway(gateway)
    receiver.close()


def test_a_download_is_one_trace_from_the_call_with_a_linked_attempt_and_its_s3_calls(traced) -> None:
    gateway, receiver = traced
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = ("traceparent", f"00-{trace_id}-{caller_span}-01")
    with grpc.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        job = stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=SMALL_IDS[:2]), metadata=(*BEARER, traceparent)).job
    with Client(gateway.address, token=TOKEN) as client:
        assert client.wait(job.job_id).state == pb.JOB_STATE_COMPLETED

    # Envoy's span continues the caller's trace, and the server's continues Envoy's.
    def envoy_span(spans):
        return next((span for service, span in spans if service == "longhaul-envoy" and span.trace_id.hex() == trace_id), None)

    def server_span(spans):
        return next((span for service, span in spans if service == "longhaul-server"
                     and span.trace_id.hex() == trace_id and span.name.endswith("/InitiateDownload")), None)

    created, proxied = receiver.until(server_span), receiver.until(envoy_span)
    assert proxied.parent_span_id.hex() == caller_span
    assert created.parent_span_id == proxied.span_id
    assert created.kind == Span.SPAN_KIND_SERVER

    # The attempt is a trace of its own, linked to the call that created the job.
    def attempt_span(spans):
        return next((span for service, span in spans if service == "longhaul-worker" and span.name == "download.attempt"
                     and any(a.key == "job_id" and a.value.string_value == job.job_id for a in span.attributes)), None)

    attempt = receiver.until(attempt_span)
    assert [(link.trace_id.hex(), link.span_id.hex()) for link in attempt.links] == [(trace_id, created.span_id.hex())]
    with redis.Redis.from_url(gateway.settings.redis_url, decode_responses=True) as client:
        kept = client.hget(f"{gateway.settings.redis_prefix}:job:{job.job_id}", "traceparent")
    assert kept == f"00-{trace_id}-{created.span_id.hex()}-01", "the job keeps the context it was created in"
    assert attempt.trace_id.hex() != trace_id

    # Its S3 calls are its children.
    def s3_calls(spans):
        names = {span.name for _, span in spans if span.trace_id == attempt.trace_id and span.parent_span_id == attempt.span_id}
        return names if "S3.CompleteMultipartUpload" in names else None

    names = receiver.until(s3_calls)
    assert {"S3.GetObject", "S3.CreateMultipartUpload", "S3.UploadPart", "S3.CompleteMultipartUpload"} <= names, names


def test_with_tracing_off_no_job_keeps_a_trace_context(gateway_without_tracing) -> None:
    """Off, nothing is stored with a job: the record has no traceparent, even when the caller sent one."""
    gateway, client_redis = gateway_without_tracing
    traceparent = ("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01")
    with grpc.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        job = stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=SMALL_IDS[:1]), metadata=(*BEARER, traceparent)).job
    assert client_redis.hget(f"{gateway.settings.redis_prefix}:job:{job.job_id}", "traceparent") is None


@pytest.fixture(scope="module")
def gateway_without_tracing(base_settings, work_dir: Path):
    gateway = start_gateway(base_settings, work_dir)
    client = redis.Redis.from_url(gateway.settings.redis_url, decode_responses=True)
    yield gateway, client
    client.close()
    stop_gateway(gateway)


def request_info(details: list) -> list[str]:
    """The request ids of an error's google.rpc.RequestInfo details (REST JSON)."""
    return [d["requestId"] for d in details if d["@type"].endswith("google.rpc.RequestInfo")]


def test_every_error_names_its_trace(traced) -> None:
    """REST body and gRPC trailer alike: a support request can name the trace."""
    gateway, _ = traced
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    status, _, body = rest(gateway.port, "GET", f"/v1/download/status/{uuid.uuid4()}", headers={"traceparent": traceparent})
    assert status == 404 and request_info(body["details"]) == [trace_id], body
    status, _, body = rest(gateway.port, "GET", f"/v1/download/{uuid.uuid4()}/file", headers={"traceparent": traceparent})
    assert status == 404 and request_info(body["details"]) == [trace_id], body  # the server's HTTP side
    with grpc.insecure_channel(gateway.address) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.DownloadServiceStub(channel).GetStatus(
            pb.GetStatusRequest(job_id=str(uuid.uuid4())), metadata=(*BEARER, ("traceparent", traceparent))
        )
    status_detail = dict(refused.value.trailing_metadata())["grpc-status-details-bin"]
    info = error_details_pb2.RequestInfo()
    assert [d.Unpack(info) and info.request_id for d in status_pb2.Status.FromString(status_detail).details] == [trace_id]


def test_envoy_starts_the_trace_of_a_call_that_brings_none(traced) -> None:
    """A plain curl sends no traceparent: Envoy's span is the root, and the error names its trace."""
    gateway, receiver = traced
    status, _, body = rest(gateway.port, "GET", f"/v1/download/status/{uuid.uuid4()}")
    assert status == 404, body
    [trace_id] = request_info(body["details"])

    def spans_of_the_trace(spans):
        found = {service: span for service, span in spans if span.trace_id.hex() == trace_id}
        return found if {"longhaul-envoy", "longhaul-server"} <= found.keys() else None

    found = receiver.until(spans_of_the_trace)
    assert found["longhaul-envoy"].parent_span_id == b"", "Envoy's span starts the trace"
    assert found["longhaul-server"].parent_span_id == found["longhaul-envoy"].span_id


def test_without_tracing_an_error_names_envoys_request_id(gateway_without_tracing) -> None:
    gateway, _ = gateway_without_tracing
    status, headers, body = rest(gateway.port, "GET", f"/v1/download/status/{uuid.uuid4()}")
    assert status == 404 and request_info(body["details"]) == [headers["x-request-id"]], body


def test_the_command_line_names_the_trace_its_calls_made(traced) -> None:
    """`longhaul` sends one trace for the whole command: the id it prints with an error is the trace
    of the server's spans for its calls."""
    gateway, receiver = traced
    result = longhaul(gateway, "status", str(uuid.uuid4()))
    assert result.returncode != 0
    match = re.search(r"NOT_FOUND: .* \[request id ([0-9a-f]{32})\]$", result.stderr.strip())
    assert match, result.stderr
    receiver.until(lambda spans: [span for service, span in spans if service == "longhaul-server"
                                  and span.trace_id.hex() == match.group(1) and span.name.endswith("/GetStatus")])


def test_a_failed_job_names_the_commands_trace_too(traced) -> None:
    gateway, _ = traced
    result = longhaul(gateway, "download", *map(str, MISSING_IDS), "-o", os.devnull)
    assert result.returncode == 1 and re.search(r"ALL_FILES_MISSING.*\[request id [0-9a-f]{32}\]", result.stderr), result.stderr
