"""Every setting of Longhaul, read once from the environment by each process's entry point.

Library code takes a `Settings` as an argument and never reads the environment itself, so tests
build settings directly and nothing leaks between them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.webhooks import retry_delays, secret_bytes


class ConfigError(ValueError):
    """A setting that cannot work; the message names it."""


@dataclass(frozen=True)
class Settings:
    # Redis: job records, event histories, the queue.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every key and the queue live under this prefix, so several deployments (or tests) can share
    # one Redis without seeing each other.
    redis_prefix: str = "lh"
    queue_name: str = "downloads"
    # Redis behind Sentinel: "host:port,host:port" of the sentinels, which say where the primary of
    # `redis_sentinel_master` is now. REDIS_URL then gives only the database, credentials and TLS of
    # the data nodes (its host is not used).
    redis_sentinels: str = ""
    redis_sentinel_master: str = "longhaul"
    redis_sentinel_password: str = ""
    # Creates and cancels are answered only once every replica connected to the primary, and at
    # least this many, has them (WAIT); 0: once the primary has them (README "Durability").
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 1_000

    # S3: sources are read from `source_bucket/source_prefix{file_id}.zip`, archives are written to
    # `artifact_bucket`.
    s3_endpoint: str = "http://127.0.0.1:8333"
    # The endpoint written into presigned URLs: what users can reach (defaults to s3_endpoint).
    s3_public_endpoint: str = ""
    s3_region: str = "us-east-1"
    # Tries of one S3 request, by botocore, before the failure reaches the job (which is then retried
    # after RETRY_BASE_MS): 5 tries back off for up to about 15 s.
    s3_max_attempts: int = 5
    s3_access_key_id: str = "longhaul"
    s3_secret_access_key: str = "longhaul-dev-secret"
    source_bucket: str = "downloads"
    source_prefix: str = "downloads/"
    artifact_bucket: str = "artifacts"

    # Results and retention.
    presign_ttl_s: int = 900
    job_ttl_s: int = 86_400
    # How long an expired job still reads EXPIRED (rather than NOT_FOUND).
    expired_retention_s: int = 604_800
    # Events kept per job for resuming a watch; a longer gap gets a fresh snapshot.
    event_history_len: int = 1_000
    # How long a finished job keeps its history (at most JOB_TTL_S): a watch resumed later gets the
    # final state as a snapshot. A finished job is then its record alone.
    event_history_ttl_s: int = 600

    # Server.
    grpc_listen: str = "127.0.0.1:50051"
    # Plain HTTP for /health and the /file redirect, behind Envoy.
    http_listen: str = "127.0.0.1:50052"
    heartbeat_s: float = 15.0
    # TLS for the server's gRPC and HTTP ports (both files, PEM); empty: plaintext, for a server
    # that only Envoy on the same host or private network reaches.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    health_check_interval_s: float = 5.0
    # A file each worker touches every few seconds from its event loop, for a liveness probe
    # (`python -m worker.liveness FILE MAX_AGE_S`); "" = none.
    liveness_file: str = ""
    # host:port where a worker serves its Prometheus metrics (GET /metrics); "" = none. Servers serve
    # theirs on their HTTP side.
    metrics_listen: str = ""
    # 1: count every gRPC call (grpc_server_* metrics); 0: not (job metrics stay on).
    grpc_metrics: int = 1
    # Job records a server keeps in memory for GetStatus, kept coherent by Redis (server/records.py);
    # about 4 kB each. 0 turns the cache off.
    record_cache_size: int = 5_000

    # Who may call (README "Security model"). API keys live hashed in this file, one per line
    # (`python -m server.apikeys` writes it); it is re-read when it changes, so keys rotate
    # without a restart. No file and no JWT settings: every call is refused.
    api_keys_file: str = ""
    # JWTs: HS256 with a shared secret and/or RS256/ES256 with keys from a JWKS file; issuer and
    # audience are required with either. The tenant is this claim of the token.
    jwt_hs256_secret: str = ""
    jwt_jwks_file: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_tenant_claim: str = "sub"
    # A JWT whose roles claim (a list, or a space-separated string) holds this role may call the
    # operator API.
    jwt_roles_claim: str = "roles"
    jwt_operator_role: str = "longhaul:operator"
    # Per tenant, shared by all replicas through Redis; 0 switches a limit off.
    tenant_max_active_jobs: int = 3
    tenant_requests_per_s: int = 50
    # Tenants with limits of their own: "tenant=ACTIVE/PER_S,..." (e.g. "batch=50/1000,dev=3/20").
    tenant_limits: str = ""
    shutdown_grace_s: float = 5.0

    # Webhooks: a job's ending POSTed to its callback URL, signed (jobs/webhooks.py). The secret reads
    # "whsec_" and the base64 of 24 to 64 random bytes (`python -m server.apikeys webhook-secret` makes
    # one); a tenant with a secret of its own in the key file signs with that. With neither, a
    # callback URL is refused.
    webhook_secret: str = ""
    # Hosts (names, addresses, CIDR blocks) a callback may reach although they are loopback,
    # private or link-local, e.g. "127.0.0.1,hooks.internal,10.1.0.0/16".
    webhook_allowed_hosts: str = ""
    # Seconds before each retry of a failed delivery; after the last one fails, it gives up (7 h 42 min
    # after the first attempt by default, less the jitter; a job's record lives JOB_TTL_S).
    webhook_retry_delays_s: str = "5,30,120,600,1800,3600,7200,14400"
    # One attempt's limit (connecting and the receiver's answer).
    webhook_timeout_s: float = 10.0
    # Deliveries one worker process makes at a time, beside its jobs.
    webhook_concurrency: int = 8

    # Worker.
    worker_concurrency: int = 16
    worker_name: str = ""
    # Simulated preparation time of a job, drawn uniformly (the original service's variables).
    delay_min_ms: int = 10_000
    delay_max_ms: int = 120_000
    upload_part_size: int = 8 * 1024 * 1024
    # A job whose worker dies is handed to another worker once its lock lapses: lock_ms plus at most
    # stalled_check_ms. Both are short so a killed worker's job restarts in seconds, not minutes.
    lock_ms: int = 10_000
    stalled_check_ms: int = 5_000
    # Starts of one job (first run, retries after transient errors, restarts after a worker died or
    # was stopped) before it fails for good.
    max_attempts: int = 5
    # Retry delay after a transient error: retry_base_ms * 2^(attempt-1), jittered by ±50 %, capped.
    retry_base_ms: int = 1_000
    retry_max_ms: int = 60_000
    # Hard limit of one attempt, well above the longest legitimate run (120 s of preparation plus the
    # transfer of a large archive): a stuck attempt is stopped and retried, never left RUNNING.
    attempt_timeout_s: float = 1_800.0
    # How often each worker process deletes expired artifacts and enqueues stranded jobs.
    housekeeping_interval_s: float = 30.0
    # A job still missing from the queue this long after it was written is enqueued by housekeeping
    # (the relay that took it from the fresh list died before enqueueing it).
    enqueue_grace_s: float = 30.0

    @functools.cached_property
    def limits_by_tenant(self) -> dict[str, tuple[int, int]]:
        """TENANT_LIMITS as {tenant: (max active jobs, requests per second)}."""
        limits: dict[str, tuple[int, int]] = {}
        for entry in filter(None, (part.strip() for part in self.tenant_limits.split(","))):
            tenant, _, numbers = entry.rpartition("=")
            active, _, per_s = numbers.partition("/")
            if not (tenant and active.isdigit() and per_s.isdigit()):
                raise ConfigError(f"TENANT_LIMITS entry {entry!r}: write tenant=ACTIVE/PER_S, e.g. batch=50/1000")
            limits[tenant] = (int(active), int(per_s))
        return limits

    def limits_for(self, tenant: str) -> tuple[int, int]:
        """(max active jobs, requests per second) of `tenant`; 0 means no limit."""
        return self.limits_by_tenant.get(tenant, (self.tenant_max_active_jobs, self.tenant_requests_per_s))

    @functools.cached_property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as [(host, port)]."""
        addresses = []
        for entry in filter(None, (part.strip() for part in self.redis_sentinels.split(","))):
            host, _, port = entry.rpartition(":")
            if not (host and port.isdigit()):
                raise ConfigError(f"REDIS_SENTINELS entry {entry!r}: write host:port, e.g. sentinel-0:26379")
            addresses.append((host, int(port)))
        return addresses

    @functools.cached_property
    def webhook_delays_s(self) -> list[float]:
        """WEBHOOK_RETRY_DELAYS_S as seconds."""
        try:
            return retry_delays(self.webhook_retry_delays_s)
        except ValueError as error:
            raise ConfigError(f"WEBHOOK_RETRY_DELAYS_S must be seconds separated by commas: {error}") from None

    @property
    def presign_endpoint(self) -> str:
        return self.s3_public_endpoint or self.s3_endpoint

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment variables that make `from_env` rebuild these settings (for child processes)."""
        return {var: str(getattr(self, name)) for var, name in ENV_VARS.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Builds settings from environment variables (see ENV_VARS); unset ones keep defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for var, name in ENV_VARS.items():
            if var in environ and environ[var] != "":
                raw = environ[var]
                kind = types[name]
                try:
                    values[name] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
                except ValueError:
                    raise ConfigError(f"{var}={raw!r} is not a valid {kind}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.delay_min_ms < 0 or self.delay_max_ms < self.delay_min_ms:
            raise ConfigError("need 0 <= DOWNLOAD_DELAY_MIN_MS <= DOWNLOAD_DELAY_MAX_MS")
        if self.upload_part_size < 5 * 1024 * 1024:
            raise ConfigError("UPLOAD_PART_SIZE must be at least 5 MiB (the S3 minimum part size)")
        if self.max_attempts < 1 or self.s3_max_attempts < 1:
            raise ConfigError("JOB_MAX_ATTEMPTS and S3_MAX_ATTEMPTS must be at least 1")
        if self.heartbeat_s <= 0 or self.presign_ttl_s <= 0 or self.job_ttl_s <= 0 or self.event_history_ttl_s <= 0:
            raise ConfigError("HEARTBEAT_INTERVAL_S, PRESIGN_TTL_S, JOB_TTL_S and EVENT_HISTORY_TTL_S must be positive")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("set both TLS_CERT_FILE and TLS_KEY_FILE, or neither")
        if (self.jwt_hs256_secret or self.jwt_jwks_file) and not (self.jwt_issuer and self.jwt_audience):
            raise ConfigError("JWTs need JWT_ISSUER and JWT_AUDIENCE: tokens for other services must not pass")
        if self.jwt_hs256_secret and len(self.jwt_hs256_secret) < 32:
            raise ConfigError("JWT_HS256_SECRET must be at least 32 characters (RFC 7518 asks for 256 bits)")
        if self.tenant_max_active_jobs < 0 or self.tenant_requests_per_s < 0:
            raise ConfigError("TENANT_MAX_ACTIVE_JOBS and TENANT_REQUESTS_PER_S must be 0 (no limit) or more")
        self.limits_by_tenant  # noqa: B018 - parses TENANT_LIMITS, raising on a bad entry
        if not 0 < self.presign_ttl_s <= 604_800:
            raise ConfigError("PRESIGN_TTL_S must be between 1 and 604800 (the 7 days S3 signatures allow)")
        if self.record_cache_size < 0:
            raise ConfigError("RECORD_CACHE_SIZE must be 0 (off) or more")
        if self.grpc_metrics not in (0, 1):
            raise ConfigError("GRPC_METRICS must be 1 (count every gRPC call) or 0")
        self.sentinel_addresses  # noqa: B018 - parses REDIS_SENTINELS, raising on a bad entry
        if self.redis_wait_replicas < 0 or self.redis_wait_timeout_ms <= 0:
            raise ConfigError("REDIS_WAIT_REPLICAS must be 0 (off) or more, REDIS_WAIT_TIMEOUT_MS positive")
        if self.webhook_secret:
            try:
                secret_bytes(self.webhook_secret)
            except ValueError as error:
                raise ConfigError(f"WEBHOOK_SECRET: {error}") from None
        self.webhook_delays_s  # noqa: B018 - parses WEBHOOK_RETRY_DELAYS_S, raising on a bad entry
        if self.webhook_timeout_s <= 0 or self.webhook_concurrency < 1:
            raise ConfigError("WEBHOOK_TIMEOUT_S must be positive and WEBHOOK_CONCURRENCY at least 1")
        if self.housekeeping_interval_s <= 0:
            raise ConfigError("HOUSEKEEPING_INTERVAL_S must be positive")


# Environment variable -> Settings field. The README's settings table mirrors this.
ENV_VARS: dict[str, str] = {
    "REDIS_URL": "redis_url",
    "LONGHAUL_REDIS_PREFIX": "redis_prefix",
    "LONGHAUL_QUEUE": "queue_name",
    "REDIS_SENTINELS": "redis_sentinels",
    "REDIS_SENTINEL_MASTER": "redis_sentinel_master",
    "REDIS_SENTINEL_PASSWORD": "redis_sentinel_password",
    "REDIS_WAIT_REPLICAS": "redis_wait_replicas",
    "REDIS_WAIT_TIMEOUT_MS": "redis_wait_timeout_ms",
    "S3_ENDPOINT": "s3_endpoint",
    "S3_PUBLIC_ENDPOINT": "s3_public_endpoint",
    "S3_REGION": "s3_region",
    "S3_MAX_ATTEMPTS": "s3_max_attempts",
    "S3_ACCESS_KEY_ID": "s3_access_key_id",
    "S3_SECRET_ACCESS_KEY": "s3_secret_access_key",
    "S3_SOURCE_BUCKET": "source_bucket",
    "S3_SOURCE_PREFIX": "source_prefix",
    "S3_ARTIFACT_BUCKET": "artifact_bucket",
    "PRESIGN_TTL_S": "presign_ttl_s",
    "JOB_TTL_S": "job_ttl_s",
    "EVENT_HISTORY_TTL_S": "event_history_ttl_s",
    "EXPIRED_RETENTION_S": "expired_retention_s",
    "EVENT_HISTORY_LEN": "event_history_len",
    "GRPC_LISTEN": "grpc_listen",
    "HTTP_LISTEN": "http_listen",
    "HEARTBEAT_INTERVAL_S": "heartbeat_s",
    "TLS_CERT_FILE": "tls_cert_file",
    "TLS_KEY_FILE": "tls_key_file",
    "HEALTH_CHECK_INTERVAL_S": "health_check_interval_s",
    "LIVENESS_FILE": "liveness_file",
    "METRICS_LISTEN": "metrics_listen",
    "GRPC_METRICS": "grpc_metrics",
    "RECORD_CACHE_SIZE": "record_cache_size",
    "API_KEYS_FILE": "api_keys_file",
    "JWT_HS256_SECRET": "jwt_hs256_secret",
    "JWT_JWKS_FILE": "jwt_jwks_file",
    "JWT_ISSUER": "jwt_issuer",
    "JWT_AUDIENCE": "jwt_audience",
    "JWT_TENANT_CLAIM": "jwt_tenant_claim",
    "JWT_ROLES_CLAIM": "jwt_roles_claim",
    "JWT_OPERATOR_ROLE": "jwt_operator_role",
    "TENANT_MAX_ACTIVE_JOBS": "tenant_max_active_jobs",
    "TENANT_REQUESTS_PER_S": "tenant_requests_per_s",
    "TENANT_LIMITS": "tenant_limits",
    "SHUTDOWN_GRACE_S": "shutdown_grace_s",
    "WEBHOOK_SECRET": "webhook_secret",
    "WEBHOOK_ALLOWED_HOSTS": "webhook_allowed_hosts",
    "WEBHOOK_RETRY_DELAYS_S": "webhook_retry_delays_s",
    "WEBHOOK_TIMEOUT_S": "webhook_timeout_s",
    "WEBHOOK_CONCURRENCY": "webhook_concurrency",
    "WORKER_CONCURRENCY": "worker_concurrency",
    "WORKER_NAME": "worker_name",
    "DOWNLOAD_DELAY_MIN_MS": "delay_min_ms",
    "DOWNLOAD_DELAY_MAX_MS": "delay_max_ms",
    "UPLOAD_PART_SIZE": "upload_part_size",
    "WORKER_LOCK_MS": "lock_ms",
    "WORKER_STALLED_CHECK_MS": "stalled_check_ms",
    "JOB_MAX_ATTEMPTS": "max_attempts",
    "RETRY_BASE_MS": "retry_base_ms",
    "RETRY_MAX_MS": "retry_max_ms",
    "ATTEMPT_TIMEOUT_S": "attempt_timeout_s",
    "HOUSEKEEPING_INTERVAL_S": "housekeeping_interval_s",
    "ENQUEUE_GRACE_S": "enqueue_grace_s",
}
