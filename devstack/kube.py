"""The Kubernetes deployment's Envoy configuration, made from the repository's envoy.yaml so the two
never drift apart (a test compares deploy/kubernetes/envoy-config.yaml with what this renders):

    python -m devstack.kube envoy-config > deploy/kubernetes/envoy-config.yaml   (make deploy-config)

In a cluster Envoy listens on every address, finds the servers by DNS (every ready pod behind the
headless Service), and reads the descriptor set and the REST guard from the assets the init
container copies out of the application image.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from devstack.services import ROOT

SERVER_SERVICE = "longhaul-server"
ASSETS = "/etc/longhaul/assets"
_HEADER = """\
# Generated from envoy.yaml by `make deploy-config` (python -m devstack.kube envoy-config): edit
# envoy.yaml, not this file. A test fails when the two differ.
"""


def envoy_in_cluster(source: Path = ROOT / "envoy.yaml", server_host: str = SERVER_SERVICE) -> dict:
    config = yaml.safe_load(source.read_text())
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["address"] = "0.0.0.0"
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for http_filter in manager["http_filters"]:
        typed = http_filter.get("typed_config", {})
        if "default_source_code" in typed:
            typed["default_source_code"] = {"filename": f"{ASSETS}/rest_guard.lua"}
        if "proto_descriptor" in typed:
            typed["proto_descriptor"] = f"{ASSETS}/longhaul.pb"
    for cluster in config["static_resources"]["clusters"]:
        # Pods come and go: resolved again every few seconds, one host per address.
        cluster["type"] = "STRICT_DNS"
        cluster["dns_lookup_family"] = "V4_ONLY"
        cluster["dns_refresh_rate"] = "5s"
        for endpoint in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            endpoint["endpoint"]["address"]["socket_address"]["address"] = server_host
    return config


class _Block(str):
    """A string written as a YAML literal block, so the ConfigMap's envoy.yaml reads as YAML."""


yaml.SafeDumper.add_representer(_Block, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|"))


def envoy_config_map(config: dict) -> str:
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "longhaul-envoy"},
        "data": {"envoy.yaml": _Block(yaml.safe_dump(config, sort_keys=False, width=120))},
    }
    return _HEADER + yaml.safe_dump(config_map, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    if argv != ["envoy-config"]:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(envoy_config_map(envoy_in_cluster()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
