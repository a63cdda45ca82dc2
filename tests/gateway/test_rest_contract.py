"""The REST surface as a browser or a script meets it: security headers, what CORS lets scripts read,
strict request bodies (unknown fields and wrong types are 400s naming the field), the body limit,
and the JSON types of the fields."""

from __future__ import annotations

import json

import pytest
from google.api import annotations_pb2

from longhaul.admin.v1 import admin_pb2 as apb
from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import SMALL_IDS
from tests.web_clients import rest

INITIATE = "/v1/download/initiate"


@pytest.mark.parametrize("path", ["/", "/v1/download/jobs"])
def test_no_other_site_may_frame_the_page_or_load_anything_into_it(gateway, path: str) -> None:
    status, headers, _ = rest(gateway.port, "GET", path)
    assert status == 200
    assert headers["x-frame-options"] == "DENY"
    policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
    assert policy["frame-ancestors"] == "'none'" and policy["default-src"] == "'self'"
    assert "strict-transport-security" not in headers, "HSTS only over TLS (test_tls.py)"


def test_scripts_on_other_origins_can_read_the_rate_limit_and_request_id_headers(gateway) -> None:
    status, headers, _ = rest(gateway.port, "GET", "/v1/download/jobs", headers={"origin": "http://app.example"})
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    exposed = set(headers["access-control-expose-headers"].split(", "))
    wanted = {"x-request-id", "retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy"}
    assert wanted <= exposed, wanted - exposed


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"file_ids": SMALL_IDS[0]}, 'field "file_ids" must be a JSON array, not a number'),
        ({"fileIds": str(SMALL_IDS[0])}, 'field "fileIds" must be a JSON array, not a string'),
        ({"file_ids": SMALL_IDS[:1], "reqest_id": "order-1"}, 'unknown field "reqest_id"'),
        ({"file_ids": SMALL_IDS[:1], "request_id": 7}, 'field "request_id" must be a JSON string, not a number'),
        ({"file_ids": SMALL_IDS[:1], "priority": ["HIGH"]}, 'field "priority" must be a JSON string or number'),
        ({"file_ids": SMALL_IDS[:1], "nested": {"file_ids": [1]}}, 'unknown field "nested"'),
    ],
)
def test_a_body_field_the_request_does_not_have_or_of_the_wrong_type_is_400_and_creates_nothing(
    gateway, jobs_index, body: dict, named: str
) -> None:
    before = jobs_index()
    status, _, reply = rest(gateway.port, "POST", INITIATE, body)
    assert status == 400 and named in reply["message"], reply
    assert jobs_index() == before


def test_the_unknown_field_message_lists_the_fields_there_are(gateway) -> None:
    status, _, reply = rest(gateway.port, "POST", "/v1/download/check", {"fileid": SMALL_IDS[0]})
    assert status == 400 and reply["message"].endswith("its fields are: file_id"), reply
    status, _, reply = rest(gateway.port, "POST", "/v1/download/00000000-0000-4000-8000-000000000000:cancel", {"job_id": "x"})
    assert status == 400 and reply["message"].endswith("its fields are: none"), reply


def test_json_names_and_proto_names_both_work(gateway) -> None:
    for body in ({"fileIds": SMALL_IDS[:1], "requestId": "json-names"}, {"file_ids": SMALL_IDS[:1], "request_id": "json-names"}):
        status, _, reply = rest(gateway.port, "POST", INITIATE, body)
        assert status == 200, reply
    assert rest(gateway.port, "POST", INITIATE, {"file_ids": SMALL_IDS[:1], "priority": 3})[0] == 200


def test_bodies_over_64_kb_are_413_and_under_it_reach_the_service(gateway, jobs_index) -> None:
    before = jobs_index()
    too_big = json.dumps({"file_ids": SMALL_IDS[:1], "request_id": "x" * 70_000})
    status, _, reply = rest(gateway.port, "POST", INITIATE, too_big)
    assert status == 413 and "over 64 KB" in reply["message"], reply
    # Under the limit: the service's own answer (too many ids), not the gateway's.
    status, _, reply = rest(gateway.port, "POST", INITIATE, {"file_ids": list(range(70_000, 76_000))})
    assert len(json.dumps({"file_ids": list(range(70_000, 76_000))})) < 65_536
    assert status == 400 and "file_ids" in reply["message"] and "64 KB" not in reply["message"], reply
    assert jobs_index() == before


def test_file_ids_are_json_numbers_and_64_bit_fields_strings(gateway) -> None:
    status, _, created = rest(gateway.port, "POST", INITIATE, {"file_ids": SMALL_IDS[:2]})
    assert status == 200 and created["job"]["fileIds"] == SMALL_IDS[:2]
    status, _, checked = rest(gateway.port, "POST", "/v1/download/check", {"file_id": SMALL_IDS[0]})
    assert checked["fileId"] == SMALL_IDS[0]
    assert isinstance(checked["sizeBytes"], str) and int(checked["sizeBytes"]) > 0, "int64: a string in proto3 JSON"
    assert isinstance(created["job"]["seq"], str)


def _json_value(field):
    """A value of the field's JSON type."""
    if field.is_repeated:
        return []
    if field.type == field.TYPE_MESSAGE:
        return "60s" if field.message_type.full_name == "google.protobuf.Duration" else {}
    return {field.TYPE_STRING: "", field.TYPE_BOOL: False}.get(field.type, 0)


def test_the_gateway_knows_every_body_field_of_the_contract(gateway) -> None:
    """gateway/rest_guard.lua lists each POST body's fields: none of the contract's may be refused."""
    services = [pb.DESCRIPTOR.services_by_name["DownloadService"], apb.DESCRIPTOR.services_by_name["AdminService"]]
    for method in (method for service in services for method in service.methods):
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        if not rule.post or rule.body != "*":
            continue
        bound = {part.strip("{}").split("=")[0] for part in rule.post.replace(":", "/").split("/") if part.startswith("{")}
        for field in method.input_type.fields:
            if field.name in bound:
                continue
            value = _json_value(field)
            path = rule.post.replace("{job_id}", "00000000-0000-4000-8000-000000000000")
            for name in (field.name, field.json_name):
                status, _, reply = rest(gateway.port, "POST", path, {name: value})
                assert "unknown field" not in str(reply) and "must be a JSON" not in str(reply), (method.name, name, reply)
