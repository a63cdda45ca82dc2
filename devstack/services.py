"""How to start each real component on chosen ports: Redis, SeaweedFS (S3), Envoy, and our own
server and worker processes. Used by `make run` and by the test fixtures alike."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import yaml

from devstack.processes import ManagedProcess, free_port, port_open

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def binary(name: str) -> str:
    search = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed; run `make install`")
    return found


# A job's record (a hash) holds a few values longer than Redis's default 64 bytes (the result, the
# file ids); one such value turns the whole hash from the compact listpack into a hash table, two to
# three times the memory. bullmq's job hashes (options as JSON) likewise. Production Redis gets the same
# setting (deploy/).
MEMORY_ARGS = ["--hash-max-listpack-value", "1024"]


def start_redis(
    port: int, data_dir: Path, log_dir: Path, appendonly: bool = False, extra_args: list[str] | None = None
) -> ManagedProcess:
    """A local Redis; with `appendonly`, persisted as production runs it (AOF, fsync every second)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--dir", str(data_dir),
        *MEMORY_ARGS,
        *(extra_args or []),
    ]
    proc = ManagedProcess("redis", argv, log_dir / f"redis-{port}.log").start()
    proc.wait_until(lambda: port_open(port), 10, "accepting connections")
    return proc


def start_seaweedfs(
    data_dir: Path,
    log_dir: Path,
    s3_port: int,
    access_key: str,
    secret_key: str,
    buckets: list[str],
) -> ManagedProcess:
    """SeaweedFS `weed mini` serving S3 on 127.0.0.1:s3_port, enforcing the given credentials.

    Every other port it opens is chosen here too, so several instances can run side by side.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    reserved = {s3_port, s3_port + 10000}
    ports = {name: free_port(reserved, also_free=(10000,)) for name in ("master", "volume", "filer", "admin")}
    webdav = free_port(reserved)
    argv = [
        binary("weed"), "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-bucket={','.join(buckets)}",
        f"-s3.port={s3_port}", f"-s3.port.grpc={s3_port + 10000}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master'] + 10000}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume'] + 10000}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer'] + 10000}",
        f"-admin.port={ports['admin']}", f"-admin.port.grpc={ports['admin'] + 10000}",
        "-admin.ui=false",
        f"-webdav.port={webdav}",
    ]
    # With credentials in its environment, weed enforces them: anonymous reads get 403.
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    proc = ManagedProcess("seaweedfs", argv, log_dir / f"seaweedfs-{s3_port}.log", env=env, cwd=data_dir).start()
    proc.wait_until(lambda: _s3_answers(s3_port), 60, "serving S3")
    return proc


def _s3_answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
    except urllib.error.HTTPError:
        return True  # 403 to an anonymous request: S3 is up
    except OSError:
        return False
    return True


SERVER_CLUSTERS = ("longhaul_grpc", "longhaul_http")


def envoy_config(
    listen_port: int,
    admin_port: int,
    servers: list[tuple[int, int]],
    metrics_port: int = 0,
    source: Path = ROOT / "envoy.yaml",
) -> dict:
    """envoy.yaml with its ports replaced, so tests run the very configuration users run.

    `servers` lists each server's (gRPC port, HTTP port); the metrics listener takes any free port
    unless `metrics_port` is given.
    """
    config = yaml.safe_load(source.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    public, metrics = config["static_resources"]["listeners"]
    public["address"]["socket_address"]["port_value"] = listen_port
    metrics["address"]["socket_address"]["port_value"] = metrics_port
    upstream_ports = {"longhaul_grpc": [g for g, _ in servers], "longhaul_http": [h for _, h in servers]}
    upstream_ports["envoy_admin"] = [admin_port]
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]
        template = endpoint["lb_endpoints"][0]
        endpoint["lb_endpoints"] = []
        for port in upstream_ports[cluster["name"]]:
            entry = yaml.safe_load(yaml.safe_dump(template))
            entry["endpoint"]["address"]["socket_address"]["port_value"] = port
            endpoint["lb_endpoints"].append(entry)
    return config


def envoy_tracing(config: dict, traces_url: str) -> dict:
    """Turns on Envoy's OpenTelemetry tracer: a span for each request, starting the trace or continuing
    the caller's (W3C traceparent), passed on to the servers; exported over OTLP/HTTP to `traces_url`."""
    url = urlparse(traces_url)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["tracing"] = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "http_service": {"http_uri": {"uri": traces_url, "cluster": "opentelemetry_collector", "timeout": "2s"}},
                "service_name": "longhaul-envoy",
            },
        }
    }
    address = {"address": url.hostname, "port_value": url.port or (443 if url.scheme == "https" else 80)}
    collector = {
        "name": "opentelemetry_collector",
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "opentelemetry_collector",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": address}}}]}],
        },
    }
    if url.scheme == "https":
        collector["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": url.hostname,
            },
        }
    config["static_resources"]["clusters"].append(collector)
    return config


HSTS = "max-age=31536000; includeSubDomains"


def envoy_tls(config: dict, cert_file: Path, key_file: Path, upstream_ca_file: Path | None = None) -> dict:
    """Turns on TLS at Envoy's listener (cert and key, ALPN h2 and http/1.1, and HSTS so that browsers
    keep to https) and, with `upstream_ca_file`, from Envoy to the servers too (servers started with
    TLS_CERT_FILE/KEY_FILE)."""
    tls = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
    certificate = {"certificate_chain": {"filename": str(cert_file)}, "private_key": {"filename": str(key_file)}}
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for host in manager["route_config"]["virtual_hosts"]:
        host["response_headers_to_add"].append({"header": {"key": "strict-transport-security", "value": HSTS}})
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": tls + "DownstreamTlsContext",
            "common_tls_context": {"tls_certificates": [certificate], "alpn_protocols": ["h2", "http/1.1"]},
        },
    }
    if upstream_ca_file is not None:
        for cluster in config["static_resources"]["clusters"]:
            # gRPC servers require ALPN h2; the HTTP side speaks HTTP/1.1.
            alpn = ["h2"] if cluster["name"] == "longhaul_grpc" else ["http/1.1"]
            cluster["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": tls + "UpstreamTlsContext",
                    "sni": "localhost",
                    "common_tls_context": {
                        "validation_context": {"trusted_ca": {"filename": str(upstream_ca_file)}},
                        "alpn_protocols": alpn,
                    },
                },
            }
    return config


def start_envoy(config: Mapping, work_dir: Path, log_dir: Path, name: str = "envoy") -> ManagedProcess:
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    listen_port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    argv = [
        binary("envoy"), "-c", str(path),
        "--use-dynamic-base-id",  # several Envoys on one machine need distinct shared-memory ids
        "--log-level", "warn",
    ]
    # cwd: envoy.yaml names the descriptor set relative to the repository root.
    proc = ManagedProcess(name, argv, log_dir / f"{name}-{listen_port}.log", cwd=ROOT).start()
    proc.wait_until(lambda: port_open(listen_port), 30, "listening")
    return proc


def python_process(name: str, module: str, env: Mapping[str, str], log_dir: Path) -> ManagedProcess:
    """Our own server or worker, as `python -m module`, configured by environment variables."""
    full_env = dict(os.environ)
    full_env.update(env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return ManagedProcess(name, [sys.executable, "-m", module], log_dir / f"{name}.log", env=full_env, cwd=ROOT).start()


def start_nginx(
    envoy_port: int, http_port: int, grpc_port: int, work_dir: Path, log_dir: Path, edit=None  # noqa: ANN001
) -> ManagedProcess:
    """gateway/nginx.conf in front of Envoy, with its ports replaced (and `edit(text)` applied)."""
    text = (ROOT / "gateway" / "nginx.conf").read_text()
    text = text.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{envoy_port};")  # both upstreams
    text = text.replace("listen 127.0.0.1:8081;", f"listen 127.0.0.1:{http_port};")
    text = text.replace("listen 127.0.0.1:8082 http2;", f"listen 127.0.0.1:{grpc_port} http2;")
    if edit is not None:
        text = edit(text)
    prefix = work_dir / f"nginx-{http_port}"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").chmod(0o777)  # nginx's workers drop root privileges
    (prefix / "nginx.conf").write_text(text)
    argv = [binary("nginx"), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    proc = ManagedProcess("nginx", argv, log_dir / f"nginx-{http_port}.log").start()
    proc.wait_until(lambda: port_open(http_port) and port_open(grpc_port), 15, "listening")
    return proc
