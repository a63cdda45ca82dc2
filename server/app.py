"""The gRPC server process: wiring, start-up and the shutdown sequence."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jobs import runtime, tracing
from jobs.connections import multiplexed_redis, pause, redis_client, s3_client_kwargs, s3_session, watch_failovers
from jobs.convert import Presigner
from jobs.queue import JobQueue
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from longhaul.admin.v1 import admin_pb2_grpc as apb_grpc
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from server import admin, operations
from server.access import Gatekeeper
from server.auth import Authenticator
from server.callbacks import Callbacks
from server.decoding import TolerantDecoding
from server.health import HealthMonitor
from server.http import HttpSide
from server.interceptors import Chain, PerMethodInterceptor
from server.metrics import GrpcMetrics
from server.ratelimit import RateLimiter
from server.records import RecordCache, StoredRecords
from server.servicer import SERVICE_NAME, DownloadServicer
from server.tracing import GrpcTracing
from server.watch import WatchHub

log = logging.getLogger(__name__)

# Envoy (and other proxies) keep upstream HTTP/2 connections alive with pings, also on connections
# whose only stream is a quiet WatchProgress. grpc's defaults answer such pings with GOAWAY "too many
# pings"; these accept them. The server's own pings find clients that vanished without a FIN.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 1024 * 1024),
    # Above what Envoy lets through (32 KB of headers): gRPC's default limits (8 KB, refused at random
    # up to 16 KB) turned long REST requests into 429s naming x-envoy-original-path.
    ("grpc.max_metadata_size", 40 * 1024),
    ("grpc.absolute_max_metadata_size", 48 * 1024),
    # Calls that arrived but that the handler loop has not picked up yet. gRPC's defaults (1,000,
    # hard limit 3,000) cancel calls beyond that: seen as CANCELLED when thousands of watchers
    # (re)connect at once, e.g. after a server restart. Such calls are cheap to hold.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 50_000),
]


def server_tls(settings: Settings) -> tuple[bytes, bytes] | None:
    """(private key, certificate chain) PEM bytes when TLS is configured."""
    if not settings.tls_cert_file:
        return None
    return Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes()


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


class LonghaulServer:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock  # the rate limiter's
        self.port = 0
        self.http_port = 0
        self._http: HttpSide | None = None
        self._exit_stack = contextlib.AsyncExitStack()
        self._server: grpc.aio.Server | None = None
        self._hub: WatchHub | None = None
        self._records: RecordCache | None = None
        self._health: HealthMonitor | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Connects, starts serving on settings.grpc_listen and returns the bound port."""
        s = self.settings
        redis = redis_client(s)
        self._exit_stack.push_async_callback(redis.aclose)
        commands = multiplexed_redis(s)
        self._exit_stack.push_async_callback(commands.aclose)
        s3 = await self._exit_stack.enter_async_context(s3_session().client("s3", **s3_client_kwargs(s)))
        store = JobStore(redis, s, commands)
        presigner = Presigner(s)
        records: RecordCache | StoredRecords = StoredRecords(store, presigner)
        if s.record_cache_size:
            self._records = records = RecordCache(store, presigner, s, s.record_cache_size)
            store.on_write = self._records.drop
        # Every job event the hub relays also drops the job's cached record.
        self._hub = WatchHub(redis, store.keys, on_event=store.on_write)
        self._health = HealthMonitor(s, redis, s3, [SERVICE_NAME, operations.SERVICE_NAME, admin.SERVICE_NAME], pause(s))
        authenticator = Authenticator(s)
        limiter = RateLimiter(commands, store.keys, s, self._clock)
        queue = JobQueue(s)  # only counted (/queue-depth): the workers' relays enqueue
        self._exit_stack.push_async_callback(queue.close)
        if failovers := watch_failovers(s, redis, commands, self._records, queue.connection_pool):
            self._exit_stack.push_async_callback(failovers.close)
        workers = WorkerRegistry(redis, store.keys)
        self._http = HttpSide(store, presigner, self._health, authenticator, limiter, queue, workers)

        tenants = [SERVICE_NAME, operations.SERVICE_NAME]  # not health, not reflection; the admin service checks its own
        ours = [*tenants, admin.SERVICE_NAME]
        layers: list[PerMethodInterceptor] = [TolerantDecoding(ours), Gatekeeper(authenticator, limiter, tenants)]
        if s.grpc_metrics:
            layers.insert(0, GrpcMetrics())  # outside the door: calls it refuses are counted too
        if tracing.enabled():
            layers.insert(0, GrpcTracing())  # a span for each call, continuing the caller's trace
        server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[Chain(*layers)])
        pb_grpc.add_DownloadServiceServicer_to_server(
            DownloadServicer(s, store, records, self._hub, presigner, s3, Callbacks(s)), server
        )
        operations.add_to_server(operations.OperationsServicer(store, records, self._hub, presigner, s.heartbeat_s), server)
        apb_grpc.add_AdminServiceServicer_to_server(admin.AdminServicer(authenticator, store, queue, workers, presigner), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health.servicer, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection(
            [SERVICE_NAME, operations.SERVICE_NAME, admin.SERVICE_NAME, health_name, reflection.SERVICE_NAME], server
        )
        tls = server_tls(s)
        if tls is None:
            self.port = server.add_insecure_port(s.grpc_listen)
        else:
            key, cert = tls
            self.port = server.add_secure_port(s.grpc_listen, grpc.ssl_server_credentials([(key, cert)]))
        if self.port == 0:
            raise RuntimeError(f"could not listen on {s.grpc_listen}")
        if self._records is not None:
            await self._records.start()
            self._exit_stack.push_async_callback(self._records.close)
        await self._hub.start()
        await self._health.start()
        self.http_port = await self._http.start(s.http_listen, http_ssl_context(s))
        await server.start()
        self._server = server
        lag = asyncio.create_task(runtime.measure_loop_lag())
        self._exit_stack.callback(lag.cancel)
        runtime.measure_gc_pauses()
        log.info("serving gRPC on %s (port %d), HTTP on port %d", s.grpc_listen, self.port, self.http_port)
        return self.port

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self) -> None:
        """Safe to call twice; the second call waits for the first."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        # 1. Tell health checkers first, so proxies send new calls elsewhere.
        if self._health is not None:
            await self._health.stop()
        # 2. Refuse new calls; unary calls in flight get the grace period to finish.
        stopped = asyncio.create_task(self._server.stop(self.settings.shutdown_grace_s)) if self._server else None
        # 3. End every watch with UNAVAILABLE and its last seq, so clients resume elsewhere.
        if self._hub is not None:
            await self._hub.close()
        if stopped is not None:
            await stopped
        if self._http is not None:
            await self._http.stop()
        # 4. Close connections.
        await self._exit_stack.aclose()
        log.info("server stopped")
