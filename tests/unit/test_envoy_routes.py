"""envoy.yaml's routes against the contract: Envoy repeats a call that a stopping server answered
CANCELLED only if the call cannot change anything (the contract marks those NO_SIDE_EFFECTS), since
the one answered may have run. The behaviour itself is tested through a real Envoy
(tests/gateway/test_envoy.py); this holds every method of every service to it."""

from __future__ import annotations

import re

import pytest
import yaml
from google.protobuf import descriptor_pb2

from devstack.services import ROOT
from longhaul.admin.v1 import admin_pb2
from longhaul.download.v1 import download_pb2

SERVICES = [
    download_pb2.DESCRIPTOR.services_by_name["DownloadService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
]
METHODS = [(service.full_name, method) for service in SERVICES for method in service.methods]


def grpc_routes() -> list[dict]:
    config = yaml.safe_load((ROOT / "envoy.yaml").read_text())
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [route for host in manager["route_config"]["virtual_hosts"] for route in host["routes"]]


def route_of(path: str) -> dict:
    """The first route whose match takes `path`, as Envoy picks it."""
    for route in grpc_routes():
        match = route["match"]
        if "path" in match and match["path"] == path:
            return route
        if "prefix" in match and path.startswith(match["prefix"]):
            return route
        if "safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path):
            return route
    raise AssertionError(f"no route for {path}")


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.name for _, m in METHODS])
def test_envoy_repeats_after_cancelled_only_what_has_no_side_effects(service: str, method) -> None:
    route = route_of(f"/{service}/{method.name}")["route"]
    retried_on = route.get("retry_policy", {}).get("retry_on", "").split(",")
    reads = method.GetOptions().idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    assert ("cancelled" in retried_on) == reads, (method.name, retried_on)
    assert "connect-failure" in retried_on, "a call that reached no server is always repeated"
