"""Random and malformed requests, thrown by hypothesis at the gRPC API (directly) and at the REST
gateway (through Envoy): every answer is a success or a client error with a message, never a
server error, and a refused request leaves no job behind."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longhaul.download.v1 import download_pb2 as pb
from tests.credentials import TOKEN, sync_channel
from tests.web_clients import grpc_web, rest

CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
}
SERVICE = "/longhaul.download.v1.DownloadService"
EXAMPLES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

int64 = st.integers(-(2**63), 2**63 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
text = st.text(max_size=150)
uuid_like = st.uuids().map(str)
ids = st.one_of(st.lists(int32, max_size=20), st.lists(st.integers(9_990, 100_000_010), min_size=995, max_size=1_005))

# (method, serialized request, streaming?)
grpc_requests = st.one_of(
    st.builds(
        lambda i, r, p: ("InitiateDownload", pb.InitiateDownloadRequest(file_ids=i, request_id=r, priority=p)), ids, text, int32
    ),
    st.builds(lambda j: ("GetStatus", pb.GetStatusRequest(job_id=j)), st.one_of(text, uuid_like)),
    st.builds(lambda j: ("CancelDownload", pb.CancelDownloadRequest(job_id=j)), st.one_of(text, uuid_like)),
    st.builds(lambda n, t: ("ListDownloads", pb.ListDownloadsRequest(page_size=n, page_token=t)), int32, text),
    st.builds(lambda f: ("CheckAvailability", pb.CheckAvailabilityRequest(file_id=f)), int32),
    st.builds(lambda j, s: ("WatchProgress", pb.WatchProgressRequest(job_id=j, after_seq=s)), st.one_of(text, uuid_like), int64),
).map(lambda pair: (pair[0], pair[1].SerializeToString()))
garbage = st.tuples(st.sampled_from(["InitiateDownload", "GetStatus", "WatchProgress", "ListDownloads"]), st.binary(max_size=200))


@pytest.fixture(scope="module")
def channel(gateway):
    with sync_channel(gateway.server.env["GRPC_LISTEN"]) as channel:
        yield channel


@EXAMPLES
@given(request=st.one_of(grpc_requests, garbage))
def test_grpc_answers_random_requests_with_a_client_error_at_worst(channel, jobs_index, request) -> None:
    method, body = request
    before = jobs_index()
    path = f"{SERVICE}/{method}"
    try:
        if method == "WatchProgress":
            for _ in channel.unary_stream(path)(body, timeout=10):
                break  # a first message is enough: the call was accepted
        else:
            channel.unary_unary(path)(body, timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
        assert code in CLIENT_ERRORS, f"{method}: {code} {error.details()}"
        assert error.details(), "every refusal says why"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert jobs_index() == before, "a refused request created a job"


json_values = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=20,
)
bodies = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries({"file_ids": json_values}).map(json.dumps),
    st.fixed_dictionaries({"file_ids": st.lists(int64, max_size=10), "request_id": json_values}).map(json.dumps),
    st.binary(max_size=300),
)
segment = st.text(max_size=60).map(lambda s: urllib.parse.quote(s, safe=""))
rest_requests = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/download/initiate"), bodies),
    st.tuples(st.just("POST"), st.just("/v1/download/check"), bodies),
    st.tuples(st.just("GET"), segment.map(lambda s: f"/v1/download/status/{s}"), st.none()),
    st.tuples(st.just("POST"), segment.map(lambda s: f"/v1/download/{s}:cancel"), bodies),
    st.tuples(
        st.just("GET"),
        st.tuples(segment, segment).map(lambda p: f"/v1/download/jobs?page_size={p[0]}&page_token={p[1]}"),
        st.none(),
    ),
    st.tuples(st.sampled_from(["GET", "DELETE"]), segment.map(lambda s: f"/v1/operations/{s}"), st.none()),
    st.tuples(st.just("GET"), segment.map(lambda s: f"/v1/download/{s}/file"), st.none()),
)
content_types = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
)


@EXAMPLES
@given(request=rest_requests, content_type=content_types)
def test_rest_answers_random_requests_with_a_4xx_at_worst(gateway, jobs_index, request, content_type: str) -> None:
    method, path, body = request
    before = jobs_index()
    status, _, reply = rest(gateway.port, method, path, body, {"content-type": content_type})
    assert status < 500, f"{method} {path} {body!r:.200} -> {status} {reply!r:.300}"
    if status >= 400:
        assert jobs_index() == before, "a refused request created a job"
        assert isinstance(reply, dict) and reply.get("message"), f"no JSON message: {reply!r:.300}"


def test_a_huge_rest_body_is_refused_without_harm(gateway, jobs_index) -> None:
    before = jobs_index()
    body = json.dumps({"file_ids": [70000] * 400_000})  # about 3 MB
    status, _, reply = rest(gateway.port, "POST", "/v1/download/initiate", body)
    assert status == 413 and "over 64 KB" in reply["message"], (status, str(reply)[:300])
    assert jobs_index() == before


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00"], ids=["empty", "cut-in-the-prefix"])
@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_a_grpc_web_call_without_a_message_is_refused_at_once(gateway, body: bytes, text: bool) -> None:
    # Before: no answer until Envoy's 10 s route timeout, then 504 / UNAVAILABLE.
    reply = grpc_web(gateway.port, "GetStatus", body, text=text)
    assert reply.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0], reply
    assert reply.headers["grpc-message"] == "the call carried no request message"


@pytest.mark.parametrize("length", [10_000, 20_000])
def test_a_url_longer_than_any_of_ours_gets_414(gateway, length: int) -> None:
    status, _, reply = rest(gateway.port, "GET", "/v1/download/status/" + "a" * length)
    assert status == 414 and "longer than 4096 bytes" in reply["message"], reply


def test_long_requests_envoy_lets_through_get_the_servers_answer_every_time(gateway) -> None:
    # A 4 KB URL and 6 KB of other headers: over gRPC's default metadata limit (8 KB, refused at random).
    padding = {"x-padding": "p" * 6_000}
    statuses = {rest(gateway.port, "GET", "/v1/download/status/" + "a" * 4_000, headers=padding)[0] for _ in range(20)}
    assert statuses == {400}, "the job id is refused as invalid, never the request as too large"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_a_rest_body_that_is_not_json_gets_415_and_creates_nothing(gateway, jobs_index, content_type) -> None:
    before = jobs_index()
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    headers = {"authorization": f"Bearer {TOKEN}"} | ({"content-type": content_type} if content_type else {})
    connection.request("POST", "/v1/download/initiate", json.dumps({"file_ids": [70000]}), headers)
    response = connection.getresponse()
    reply = json.loads(response.read())
    connection.close()
    assert response.status == 415 and "content-type: application/json" in reply["message"], reply
    assert jobs_index() == before


def test_json_with_a_charset_is_json(gateway) -> None:
    status, _, reply = rest(
        gateway.port, "POST", "/v1/download/check", {"file_id": 70000}, {"content-type": "application/json; charset=utf-8"}
    )
    assert status == 200, reply


def test_a_header_that_is_not_utf8_is_served_and_logged_as_the_clients_mistake(gateway) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.putrequest("GET", "/v1/download/jobs")
    connection.putheader("authorization", f"Bearer {TOKEN}")
    connection.putheader("x-odd", b"\xff\xfe")
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    assert status == 200
    log = gateway.server.tail(400)
    assert "a client sent metadata that is not UTF-8" in log
    assert "ERROR" not in log and "Traceback" not in log, log
