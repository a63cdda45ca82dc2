"""`make run`: the whole stack on one machine with embedded defaults, in the foreground.

Uses the Redis at REDIS_URL when one answers there and starts a local redis-server otherwise
(persisted with AOF in the data directory); likewise the S3 server at S3_ENDPOINT (SeaweedFS
otherwise). Then the buckets and seed files, the gRPC server, the workers and Envoy. It refuses to
start when a port it would listen on is taken, naming the process that holds it. A process that
dies is restarted after a pause that doubles with each recent crash; one that keeps crashing stops
everything. Ctrl-C or SIGTERM stops every process it started.

Unless API_KEYS_FILE or JWT settings say who may call, it makes a development API key (tenant
"dev"), kept in the data directory so it survives restarts, and prints it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from devstack.processes import ManagedProcess, ProcessFailed, port_holder, port_open
from devstack.restarts import RestartPolicy
from devstack.seed import SEED_FILE_IDS, seed_sources
from devstack.services import ROOT, envoy_config, envoy_tracing, python_process, start_envoy, start_redis, start_seaweedfs
from jobs import tracing
from jobs.connections import s3_client_kwargs, s3_session
from jobs.logs import setup_logging
from jobs.settings import Settings
from jobs.webhooks import new_secret
from server.apikeys import entry_line, key_id_of, new_key

log = logging.getLogger("devstack")


class Stack:
    def __init__(
        self,
        settings: Settings,
        data_dir: Path,
        workers: int,
        envoy_port: int,
        envoy_admin_port: int,
        envoy_metrics_port: int = 9902,
        servers: int = 1,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.log_dir = data_dir / "logs"
        self.workers = workers
        self.servers = servers
        self.envoy_port = envoy_port
        self.envoy_admin_port = envoy_admin_port
        self.envoy_metrics_port = envoy_metrics_port
        self.started: list[ManagedProcess] = []
        self.notes: list[str] = []
        self.dev_key = ""
        self.operator_key = ""

    def start(self) -> None:
        self.prepare()
        env = self.settings.to_env()
        for index, (grpc_listen, http_listen) in enumerate(self.server_listens()):
            name = "server" if self.servers == 1 else f"server-{index + 1}"
            server = python_process(name, "server", dict(env, GRPC_LISTEN=grpc_listen, HTTP_LISTEN=http_listen), self.log_dir)
            self.started.append(server)
            server.wait_until(functools.partial(_serving, grpc_listen, http_listen), 30, "serving")
        for index, metrics_listen in enumerate(self.worker_metrics()):
            worker_env = dict(env, WORKER_NAME=f"worker-{index + 1}@{os.uname().nodename}", METRICS_LISTEN=metrics_listen)
            self.started.append(python_process(f"worker-{index + 1}", "worker", worker_env, self.log_dir))
        upstreams = [(_port(grpc_listen), _port(http_listen)) for grpc_listen, http_listen in self.server_listens()]
        config = envoy_config(self.envoy_port, self.envoy_admin_port, upstreams, self.envoy_metrics_port)
        if tracing.enabled():
            envoy_tracing(config, tracing.traces_url())
        self.started.append(start_envoy(config, self.data_dir / "envoy", self.log_dir))

    def server_listens(self) -> list[tuple[str, str]]:
        """(gRPC, HTTP) address of each server process: GRPC_LISTEN and HTTP_LISTEN for the first,
        ports two apart after them for the others (so 50051/50052, 50053/50054, ... by default)."""
        (grpc_host, _, grpc_port), (http_host, _, http_port) = (
            self.settings.grpc_listen.rpartition(":"), self.settings.http_listen.rpartition(":")
        )
        return [
            (f"{grpc_host}:{int(grpc_port) + 2 * index}", f"{http_host}:{int(http_port) + 2 * index}")
            for index in range(self.servers)
        ]

    def worker_metrics(self) -> list[str]:
        """Where each worker serves its metrics: METRICS_LISTEN (by default 127.0.0.1:9102) for the
        first, the ports after it for the others."""
        host, _, port = (self.settings.metrics_listen or "127.0.0.1:9102").rpartition(":")
        return [f"{host}:{int(port) + index}" for index in range(self.workers)]

    def prepare(self) -> None:
        """Everything the service needs before it starts: free ports, credentials, Redis, S3 and the
        seeded buckets (the container deployment, devstack/deploy.py, starts the service itself)."""
        self._check_ports_free()
        self._credentials()
        self._webhooks()
        self._redis()
        self._s3()
        asyncio.run(self._prepare_buckets())

    def _check_ports_free(self) -> None:
        """Our servers and Envoy bind with SO_REUSEPORT: a second stack on the same ports would start
        and share them with the first, each answering half the calls. Refuse instead."""
        wanted = {
            self.envoy_port: "Envoy (ENVOY_PORT)",
            self.envoy_admin_port: "Envoy's admin (ENVOY_ADMIN_PORT)",
            **{_port(grpc): "a gRPC server (GRPC_LISTEN)" for grpc, _ in self.server_listens()},
            **{_port(http): "a server's HTTP side (HTTP_LISTEN)" for _, http in self.server_listens()},
            self.envoy_metrics_port: "Envoy's metrics (ENVOY_METRICS_PORT)",
            **{_port(listen): "a worker's metrics (METRICS_LISTEN)" for listen in self.worker_metrics()},
        }
        for port, what in wanted.items():
            if port_open(port):
                holder = port_holder(port) or "another process"
                raise SystemExit(
                    f"port {port}, for {what}, is taken by {holder}: stop it (another `make run`?) "
                    "or choose another port with that setting"
                )

    def _credentials(self) -> None:
        s = self.settings
        if s.api_keys_file or s.jwt_hs256_secret or s.jwt_jwks_file:
            self.notes.append(f"Auth         {s.api_keys_file or 'JWTs only'} (no development key made)")
            return
        hashed = self.data_dir / "dev-api-keys"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.dev_key = _dev_key(self.data_dir / "dev-api-key", hashed, "dev", operator=False)
        self.operator_key = _dev_key(self.data_dir / "dev-operator-key", hashed, "dev-operator", operator=True)
        self.settings = s.replace(api_keys_file=str(hashed))

    def _webhooks(self) -> None:
        """Unless WEBHOOK_SECRET is set: a development secret (kept in the data directory), and
        callbacks to this machine allowed, where a developer's receiver runs."""
        s = self.settings
        if s.webhook_secret:
            return
        kept = self.data_dir / "dev-webhook-secret"
        secret = kept.read_text().strip() if kept.exists() else ""
        if not secret:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            secret = new_secret()
            kept.write_text(secret + "\n")
            kept.chmod(0o600)
        allowed = s.webhook_allowed_hosts or "127.0.0.1,::1,localhost"
        self.settings = s.replace(webhook_secret=secret, webhook_allowed_hosts=allowed)
        self.notes.append(f"Webhooks     signed with the secret in {kept}; callbacks to this machine allowed")

    def _redis(self) -> None:
        if self.settings.redis_sentinels:  # yours (`deploy up` starts its own: devstack/deploy.py)
            s = self.settings
            self.notes.append(f"Redis        primary {s.redis_sentinel_master!r} of the sentinels at {s.redis_sentinels}")
            return
        url = urlparse(self.settings.redis_url)
        client = redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=1, decode_responses=True)
        try:
            client.ping()
        except redis.RedisError:
            if url.hostname not in ("127.0.0.1", "localhost"):
                raise SystemExit(f"Redis at {self.settings.redis_url} does not answer") from None
        else:
            self.notes.append(f"Redis        {self.settings.redis_url} (already running{_persistence_warning(client)})")
            return
        port = url.port or 6379
        self.started.append(start_redis(port, self.data_dir / "redis", self.log_dir, appendonly=True))
        self.notes.append(f"Redis        {self.settings.redis_url} (started here, data in {self.data_dir / 'redis'}, AOF)")

    def _s3(self) -> None:
        url = urlparse(self.settings.s3_endpoint)
        port = url.port or 80
        if port_open(port, url.hostname or "127.0.0.1"):
            self.notes.append(f"S3           {self.settings.s3_endpoint} (already running)")
            return
        if url.hostname not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"S3 at {self.settings.s3_endpoint} does not answer")
        s = self.settings
        self.started.append(
            start_seaweedfs(
                self.data_dir / "seaweedfs", self.log_dir, port, s.s3_access_key_id, s.s3_secret_access_key,
                [s.source_bucket, s.artifact_bucket],
            )
        )
        self.notes.append(
            f"S3           {s.s3_endpoint} (SeaweedFS started here; key {s.s3_access_key_id}, "
            f"secret {s.s3_secret_access_key})"
        )

    async def _prepare_buckets(self) -> None:
        s = self.settings
        async with s3_session().client("s3", **s3_client_kwargs(s)) as s3:
            existing = {b["Name"] for b in (await s3.list_buckets()).get("Buckets", [])}
            for bucket in (s.source_bucket, s.artifact_bucket):
                if bucket not in existing:
                    await s3.create_bucket(Bucket=bucket)
            written = await seed_sources(s3, s)
        self.notes.append(
            f"Source files {len(SEED_FILE_IDS)} in s3://{s.source_bucket}/{s.source_prefix} "
            f"(ids {SEED_FILE_IDS[0]}, {SEED_FILE_IDS[1]}, ... {SEED_FILE_IDS[-1]}; {written} written now)"
        )

    def banner(self) -> str:
        listens = self.server_listens()
        page = f"http://127.0.0.1:{self.envoy_port}/"
        lines = [
            "",
            "Longhaul is running.",
            f"  gRPC (direct) {', '.join(grpc for grpc, _ in listens)}",
            f"  Envoy         127.0.0.1:{self.envoy_port}   (admin 127.0.0.1:{self.envoy_admin_port})",
            f"  Web page      {page + '#token=' + self.dev_key if self.dev_key else page}",
            f"  Operator page {page + 'admin' + ('#token=' + self.operator_key if self.operator_key else '')}",
            *(f"  {note}" for note in self.notes),
            f"  Servers       {self.servers} processes, behind Envoy",
            f"  Workers       {self.workers} processes",
            f"  Metrics       http://{listens[0][1]}/metrics (server{' 1' if self.servers > 1 else ''})",
            *(f"                http://{http}/metrics (server {n})" for n, (_, http) in enumerate(listens[1:], 2)),
            *(f"                http://{listen}/metrics (worker {n})" for n, listen in enumerate(self.worker_metrics(), 1)),
            f"                http://127.0.0.1:{self.envoy_metrics_port}/stats/prometheus (Envoy)",
            f"  Logs          {self.log_dir}",
        ]
        if self.dev_key:
            lines += [
                f"  API key       {self.dev_key}",
                "                (tenant \"dev\"; for development only: production sets API_KEYS_FILE)",
                f"  Operator key  {self.operator_key}",
                "                (operator \"dev-operator\": the operator API, longhaul.admin.v1.AdminService)",
                "",
                "Try:",
                f"  export LONGHAUL_TOKEN={self.dev_key}",
                f"  .venv/bin/longhaul download 70000 70007 -o out.zip --target 127.0.0.1:{self.envoy_port}",
                "  .venv/bin/grpcurl -plaintext -H \"authorization: Bearer $LONGHAUL_TOKEN\" "
                f"-d '{{\"file_ids\": [70000, 70007]}}' 127.0.0.1:{self.envoy_port} "
                "longhaul.download.v1.DownloadService/InitiateDownload",
            ]
        lines += ["", "Ctrl-C stops everything."]
        return "\n".join(lines)

    def watch(self, stop: list[int]) -> int:
        """Restarts the children that die until a signal comes (returns 0) or one keeps crashing
        (returns 1)."""
        policies = {proc.name: RestartPolicy() for proc in self.started}
        restart_at: dict[str, float] = {}
        while not stop:
            now = time.monotonic()
            for proc in self.started:
                if proc.alive():
                    continue
                if proc.name not in restart_at:
                    policy = policies[proc.name]
                    pause_s = policy.crashed()
                    code = proc.proc.returncode if proc.proc is not None else None
                    if pause_s is None:
                        log.error(
                            "%s keeps crashing (more than %d times in %.0f s); stopping everything. Its log: %s\n%s",
                            proc.name, policy.max_crashes, policy.window_s, proc.log_path, proc.tail(),
                        )
                        return 1
                    log.error("%s exited (code %s); restarting it in %.0f s. Its log: %s\n%s",
                              proc.name, code, pause_s, proc.log_path, proc.tail())
                    restart_at[proc.name] = now + pause_s
                elif now >= restart_at[proc.name]:
                    del restart_at[proc.name]
                    proc.start()
                    log.warning("%s restarted (pid %d)", proc.name, proc.pid)
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        for proc in reversed(self.started):
            log.info("stopping %s", proc.name)
            proc.stop()


def _dev_key(plain: Path, hashed: Path, owner: str, operator: bool) -> str:
    """A development key of `owner` (a tenant, or an operator), made at the first run and the same at
    every run after. The key in plain text is kept only so that the next run can print it again."""
    key = plain.read_text().strip() if plain.exists() else ""
    key_id = key_id_of(key)
    if not key_id:
        key_id, key = new_key()
        plain.write_text(key + "\n")
        plain.chmod(0o600)
    # Kept as it is when it has the key already: keys added with `python -m server.apikeys` stay valid.
    lines = hashed.read_text().splitlines() if hashed.exists() else []
    if not any(line.split(maxsplit=1)[:1] == [key_id] for line in lines):
        lines.append(entry_line(key_id, key, owner, "development key made by make run", operator=operator))
        hashed.write_text("\n".join(lines) + "\n")
    return key


def _port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def _serving(grpc_listen: str, http_listen: str) -> bool:
    return port_open(_port(grpc_listen)) and port_open(_port(http_listen))


def _persistence_warning(client: redis.Redis) -> str:
    try:
        persisted = client.config_get("appendonly").get("appendonly") == "yes" or client.config_get("save").get("save")
    except redis.RedisError:
        return ""  # CONFIG is refused by many managed Redis services, which persist anyway
    return "" if persisted else "; it keeps nothing on disk, so its jobs are lost when it restarts"


def main() -> int:
    setup_logging("devstack")
    settings = Settings.from_env()
    data_dir = Path(os.environ.get("LONGHAUL_DATA_DIR", ROOT / ".data")).resolve()
    stack = Stack(
        settings,
        data_dir,
        workers=int(os.environ.get("WORKER_PROCESSES", "2")),
        servers=int(os.environ.get("SERVER_PROCESSES", "1")),
        envoy_port=int(os.environ.get("ENVOY_PORT", "8080")),
        envoy_admin_port=int(os.environ.get("ENVOY_ADMIN_PORT", "9901")),
        envoy_metrics_port=int(os.environ.get("ENVOY_METRICS_PORT", "9902")),
    )
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: stop.append(number))
    try:
        stack.start()
        print(stack.banner(), flush=True)
        code = stack.watch(stop)
    except (ProcessFailed, OSError) as error:
        log.error("%s", error)
        code = 1
    finally:
        stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
