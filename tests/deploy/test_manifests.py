"""The deployment files, checked offline: the Containerfiles pass hadolint, every Kubernetes manifest
validates strictly against the Kubernetes schemas, the cluster's Envoy configuration is envoy.yaml's,
and the worker autoscaler reads the backlog where the server publishes it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devstack.kube import ASSETS, CLUSTER_COLLECTOR, envoy_file, envoy_in_cluster
from devstack.services import ROOT, SERVER_CLUSTERS, envoy_tracing

KUBERNETES = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[Path]:
    return sorted(path for path in KUBERNETES.rglob("*.yaml") if path.parent.name != "envoy")


@pytest.mark.parametrize("containerfile", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("Containerfile")))
def test_the_containerfiles_pass_hadolint(containerfile: str) -> None:
    result = subprocess.run([BIN / "hadolint", ROOT / containerfile], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    files = [path for path in manifests() if path.name != "kustomization.yaml"]
    result = subprocess.run([BIN / "kubernetes-validate", "--strict", "--quiet", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a misspelt field in a copy of one manifest.
    broken = tmp_path / "broken.yaml"
    broken.write_text((KUBERNETES / "server.yaml").read_text().replace("readinessProbe:", "readynessProbe:"))
    result = subprocess.run([BIN / "kubernetes-validate", "--strict", "--quiet", broken], capture_output=True, text=True)
    assert result.returncode != 0 and "readynessProbe" in result.stdout + result.stderr


def test_the_kustomization_lists_every_manifest_but_the_optional_ones() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {str(path.relative_to(KUBERNETES)) for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    (generated,) = kustomization["configMapGenerator"]
    assert generated["name"] == "longhaul-envoy" and generated["files"] == ["envoy/envoy.yaml"]


def test_the_clusters_envoy_configuration_is_envoy_yaml_with_servers_found_by_dns() -> None:
    shipped = (KUBERNETES / "envoy" / "envoy.yaml").read_text()
    assert shipped == envoy_file(envoy_in_cluster()), "run `make deploy-config` after changing envoy.yaml"
    config = yaml.safe_load(shipped)
    clusters = {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}
    for name in SERVER_CLUSTERS:
        assert clusters[name]["cluster_type"]["name"] == "envoy.cluster.dns"
        address = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        assert address["socket_address"]["address"] == "longhaul-server"
    # Envoy's own admin API, behind the metrics listener, stays on the pod's loopback.
    admin = clusters["envoy_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    admin_port = config["admin"]["address"]["socket_address"]["port_value"]
    assert admin["socket_address"] == {"address": "127.0.0.1", "port_value": admin_port}
    service = next(doc for doc in documents(KUBERNETES / "server.yaml") if doc["kind"] == "Service")
    assert service["metadata"]["name"] == "longhaul-server" and service["spec"]["clusterIP"] == "None"


def test_the_tracing_variant_is_the_same_with_envoys_tracer() -> None:
    shipped = (KUBERNETES / "envoy" / "envoy-tracing.yaml").read_text()
    assert shipped == envoy_file(envoy_tracing(envoy_in_cluster(), CLUSTER_COLLECTOR)), "run `make deploy-config`"


@pytest.mark.parametrize("name", ["envoy.yaml", "envoy-tracing.yaml"])
def test_envoy_accepts_the_clusters_configuration(tmp_path: Path, name: str) -> None:
    """`envoy --mode validate`, with the assets where the init container puts them."""
    assets = tmp_path / "assets"
    assets.mkdir()
    for source in (ROOT / "gen" / "longhaul.pb", ROOT / "gateway" / "rest_guard.lua"):
        (assets / source.name).write_bytes(source.read_bytes())
    config = tmp_path / name
    config.write_text((KUBERNETES / "envoy" / name).read_text().replace(ASSETS, str(assets)))
    result = subprocess.run([BIN / "envoy", "--mode", "validate", "-c", config], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_container_runs_as_non_root_on_a_read_only_root_filesystem() -> None:
    for path in manifests():
        for doc in documents(path):
            if doc["kind"] not in ("Deployment", "StatefulSet"):
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, path
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, path
            for container in pod.get("initContainers", []) + pod["containers"]:
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, (path, container["name"])
                assert security["allowPrivilegeEscalation"] is False, (path, container["name"])
                assert security["capabilities"] == {"drop": ["ALL"]}, (path, container["name"])
                assert container["resources"]["requests"] and container["resources"]["limits"], (path, container["name"])


def test_the_worker_autoscaler_reads_the_backlog_the_server_publishes() -> None:
    scaled = next(doc for doc in documents(KUBERNETES / "worker.yaml") if doc["kind"] == "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "metrics-api"
    # The endpoint and field tests/integration/test_queue_depth.py checks against a real Redis.
    assert trigger["metadata"]["url"] == "http://longhaul-server:50052/queue-depth"
    assert trigger["metadata"]["valueLocation"] == "backlog"


def test_the_compose_file_runs_the_same_parts_with_restarts_health_checks_and_volumes() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "seaweedfs", "longhaul-server", "worker-1", "worker-2", "envoy"} <= set(services)
    for name in ("redis", "longhaul-server", "worker-1", "worker-2", "envoy", "seaweedfs"):
        assert services[name]["restart"] == "unless-stopped", name
    for name in ("redis", "longhaul-server", "worker-1", "worker-2"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("longhaul-server", "worker-1", "worker-2", "envoy"):
        assert services[name]["read_only"] is True and services[name]["user"] != "0:0", name
    assert "--appendonly" in services["redis"]["command"]
    assert set(compose["volumes"]) == {"redis-data", "seaweedfs-data"}
    # Envoy's configuration is the cluster's (servers found by the name longhaul-server).
    (config,) = [v.split(":")[0] for v in services["envoy"]["volumes"] if v.endswith("envoy.yaml:ro")]
    assert (ROOT / "deploy" / config).resolve() == (KUBERNETES / "envoy" / "envoy.yaml")


def test_the_sentinel_variant_names_its_nodes_as_the_settings_do() -> None:
    statefulset, service, _ = documents(KUBERNETES / "optional" / "redis-sentinel.yaml")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    env = {e["name"]: e.get("value") for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    name, domain = statefulset["metadata"]["name"], service["metadata"]["name"]
    nodes = [f"{name}-{i}.{domain}" for i in range(statefulset["spec"]["replicas"])]
    assert env["SENTINELS"].split() == [f"{node}:{env['SENTINEL_PORT']}" for node in nodes]
    assert env["FIRST_PRIMARY"] == f"{nodes[0]}:{env['REDIS_PORT']}"
    # The lines settings.yaml has, commented out, for this variant.
    (sentinels,) = re.findall(r"# REDIS_SENTINELS: (\S+)", (KUBERNETES / "settings.yaml").read_text())
    assert sentinels.split(",") == env["SENTINELS"].split()
