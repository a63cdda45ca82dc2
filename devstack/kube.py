"""The Kubernetes manifests, made and adapted here.

The cluster's Envoy configuration is made from the repository's envoy.yaml so the two never drift
apart (a test compares deploy/kubernetes/envoy/envoy.yaml with what this renders):

    python -m devstack.kube envoy-config > deploy/kubernetes/envoy/envoy.yaml   (make deploy-config)
    python -m devstack.kube envoy-config --tracing     the same with Envoy's tracer (envoy-tracing.yaml)

In a cluster (and in deploy/compose.yaml) Envoy listens on every address, finds the servers by DNS
(every ready pod behind the headless Service `longhaul-server`), and reads the descriptor set and
the REST guard from the assets an init container copies out of the application image.

`local_manifests` is the local overlay `make deploy-up` runs with `podman kube play`: the same
Deployments on the host's network, with the images `make images` built and the settings and key
file `make run` would use; `local_sentinel_redis` likewise for optional/redis-sentinel.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from devstack.services import ROOT, SERVER_CLUSTERS, envoy_config, envoy_tracing
from jobs.settings import Settings

SERVER_SERVICE = "longhaul-server"
ASSETS = "/etc/longhaul/assets"
_HEADER = """\
# Envoy in a cluster (the ConfigMap longhaul-envoy) and in compose.yaml. Generated from envoy.yaml by
# `make deploy-config` (python -m devstack.kube envoy-config): edit envoy.yaml, not this file. A test
# fails when the two differ.
"""


def envoy_in_cluster(config: dict | None = None, server_host: str = SERVER_SERVICE) -> dict:
    """`config` (by default envoy.yaml) as Envoy runs in the cluster."""
    config = config or yaml.safe_load((ROOT / "envoy.yaml").read_text())
    listener, metrics = config["static_resources"]["listeners"]
    if server_host == SERVER_SERVICE:
        listener["address"]["socket_address"]["address"] = "0.0.0.0"
        metrics["address"]["socket_address"]["address"] = "0.0.0.0"  # scraped by the pod's address
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for http_filter in manager["http_filters"]:
        typed = http_filter.get("typed_config", {})
        if "default_source_code" in typed:
            typed["default_source_code"] = {"filename": f"{ASSETS}/rest_guard.lua"}
        if "proto_descriptor" in typed:
            typed["proto_descriptor"] = f"{ASSETS}/longhaul.pb"
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] not in SERVER_CLUSTERS:
            continue  # the admin API, in the same pod
        # Pods come and go: resolved again every few seconds, one host per address.
        del cluster["type"]
        cluster["cluster_type"] = {
            "name": "envoy.cluster.dns",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster",
                "dns_refresh_rate": "5s",
                "dns_lookup_family": "V4_ONLY",
            },
        }
        for endpoint in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            endpoint["endpoint"]["address"]["socket_address"]["address"] = server_host
    return config


def envoy_file(config: dict) -> str:
    return _HEADER + yaml.safe_dump(config, sort_keys=False, width=120)


def _config_map(name: str, data: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


KUBERNETES = ROOT / "deploy" / "kubernetes"
LOCAL_IMAGES = {
    "longhaul:dev": "localhost/longhaul:dev",
    "envoyproxy/envoy:v1.40.0": "localhost/envoy:dev",
    "redis:7.2-bookworm": "localhost/redis:dev",
}
_SECRET_ENV = {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "WEBHOOK_SECRET"}
# On the host's network every worker would take the same metrics port: the overlay leaves it off.
_HOST_PORT_ENV = {"METRICS_LISTEN"}


def _documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


def local_manifests(
    settings: Settings, envoy_port: int, envoy_admin_port: int, workers: int, assets: Path
) -> tuple[list[dict], list[list[str]]]:
    """The Deployments and ConfigMaps of deploy/kubernetes, for one machine: host networking (the
    ports of `make run`), one server, `workers` workers, the local images, the settings and key file
    of `settings` (a local overlay has no Secret: podman reads the key file from the host).

    Also the `podman run` commands that stand for the init containers, to run first: podman 4.3
    sometimes removes an init container before it has ended and fails the pod. They write to
    `assets`, which the pods mount in place of their emptyDir."""
    grpc_port = int(settings.grpc_listen.rsplit(":", 1)[1])
    http_port = int(settings.http_listen.rsplit(":", 1)[1])
    env = settings.to_env() | {"API_KEYS_FILE": "/etc/longhaul/keys/api-keys", "LIVENESS_FILE": "/tmp/longhaul/alive"}
    settings_map = _config_map("longhaul-settings", env)
    envoy = envoy_config(envoy_port, envoy_admin_port, [(grpc_port, http_port)])
    local_envoy = envoy_file(envoy_in_cluster(envoy, server_host="127.0.0.1"))
    envoy_map = _config_map("longhaul-envoy", {"envoy.yaml": local_envoy})
    deployments = {doc["metadata"]["name"]: doc for name in ("server.yaml", "worker.yaml", "gateway.yaml")
                   for doc in _documents(name) if doc["kind"] == "Deployment"}
    worker = deployments.pop("longhaul-worker")
    for index in range(workers):  # podman runs one pod per Deployment, whatever its replicas
        copy = yaml.safe_load(yaml.safe_dump(worker))
        copy["metadata"]["name"] = f"longhaul-worker-{index + 1}"
        deployments[copy["metadata"]["name"]] = copy
    init_runs: list[list[str]] = []
    for deployment in deployments.values():
        deployment["spec"]["replicas"] = 1
        pod = deployment["spec"]["template"]["spec"]
        pod["hostNetwork"] = True
        init_runs += [_init_run(init, pod, assets) for init in pod.pop("initContainers", [])]
        for container in pod["containers"]:
            _local_container(container, key_file=env["API_KEYS_FILE"])
        for volume in pod.get("volumes", []):
            if volume["name"] == "assets":
                volume.pop("emptyDir")
                volume["hostPath"] = {"path": str(assets), "type": "Directory"}
            if volume["name"] == "keys":
                volume.pop("secret")
                volume["hostPath"] = {"path": str(Path(settings.api_keys_file).resolve()), "type": "File"}
    return [settings_map, envoy_map, *deployments.values()], init_runs


def _init_run(init: dict, pod: dict, assets: Path) -> list[str]:
    """`podman run` arguments doing what the init container does."""
    mounts = [f"--volume={assets}:{m['mountPath']}" for m in init["volumeMounts"] if m["name"] == "assets"]
    user = f"--user={pod['securityContext']['runAsUser']}"
    command = init["command"]  # as in Kubernetes, `command` replaces the image's entrypoint
    return ["run", "--rm", "--read-only", user, *mounts, f"--entrypoint={command[0]}", LOCAL_IMAGES[init["image"]], *command[1:]]


def node_port(sentinel_port: int) -> int:
    """Where the Redis node beside a sentinel listens in the local overlay: 20000 ports below, as
    Redis pairs 26379 and 6379."""
    return sentinel_port - 20_000


def local_sentinel_redis(sentinels: list[tuple[str, int]], data_dir: Path) -> list[dict]:
    """optional/redis-sentinel.yaml for one machine: a Pod per node of the StatefulSet (podman has
    no StatefulSets), on the host's network. Node N's sentinel listens at the Nth address of
    REDIS_SENTINELS and its Redis at `node_port` of it; its volume is `data_dir`/redis-N, which
    must exist."""
    statefulset, _, scripts = _documents("optional/redis-sentinel.yaml")
    pods = []
    for index, (host, port) in enumerate(sentinels):
        pod = yaml.safe_load(yaml.safe_dump(statefulset["spec"]["template"]))  # a copy, anchors undone
        spec = pod["spec"]
        spec["hostNetwork"] = True
        spec.pop("affinity")
        spec["volumes"].append({"name": "data", "hostPath": {"path": str(data_dir / f"redis-{index}"), "type": "Directory"}})
        node = {
            "ANNOUNCE_HOST": host,
            "REDIS_PORT": str(node_port(port)),
            "SENTINEL_PORT": str(port),
            "SENTINELS": " ".join(f"{h}:{p}" for h, p in sentinels),
            "FIRST_PRIMARY": f"{sentinels[0][0]}:{node_port(sentinels[0][1])}",
        }
        for container in spec["containers"]:
            _local_container(container)
            container["env"] = [{"name": name, "value": node.get(name, e.get("value"))}
                                for e in container["env"] if (name := e["name"]) != "POD_NAME"]
        pod["metadata"]["name"] = f"longhaul-redis-{index}"
        pods.append({"apiVersion": "v1", "kind": "Pod", **pod})
    return [scripts, *pods]


def _local_container(container: dict, key_file: str = "") -> None:
    container["image"] = LOCAL_IMAGES[container["image"]]
    # Secrets are in the ConfigMap here.
    container["env"] = [e for e in container.get("env", []) if e["name"] not in _SECRET_ENV | _HOST_PORT_ENV]
    container.pop("lifecycle", None)  # preStop hooks are not podman's
    container.pop("ports", None)  # on the host's network
    # podman runs probes as systemd timers, and without systemd a restarted container's state goes
    # wrong ("Stopping" while it runs). `deploy up` checks readiness itself.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container.pop(probe, None)
    for mount in container.get("volumeMounts", []):
        if mount["name"] == "keys":
            mount["mountPath"] = key_file  # the key file itself, not the Secret's directory


# Where the cluster's Envoy sends its spans in the tracing variant: an OpenTelemetry Collector's
# OTLP/HTTP port, under the name its Helm chart and operator give the Service by default.
CLUSTER_COLLECTOR = "http://otel-collector:4318/v1/traces"


def main(argv: list[str]) -> int:
    if argv not in (["envoy-config"], ["envoy-config", "--tracing"]):
        print(__doc__, file=sys.stderr)
        return 2
    config = envoy_in_cluster()
    if "--tracing" in argv:
        envoy_tracing(config, CLUSTER_COLLECTOR)
    sys.stdout.write(envoy_file(config))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
