"""Real components for the tests: one Redis and one SeaweedFS per session, on free loopback ports.

Each test gets its own Redis key prefix (and so its own queue), so tests never see each other's
jobs and nothing needs flushing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from devstack.processes import free_port
from devstack.seed import SEED_FILE_IDS, seed_sources
from devstack.services import start_redis, start_seaweedfs
from jobs.connections import s3_client_kwargs, s3_session
from jobs.settings import Settings
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from server.app import LonghaulServer
from tests import credentials
from worker.runner import WorkerRunner

# The seed files used by tests: small ones for speed, plus the three largest (about 3-4 MB each)
# so an archive of them spans several multipart parts.
SMALL_IDS = SEED_FILE_IDS[:10]
LARGE_IDS = SEED_FILE_IDS[-3:]
MISSING_IDS = [99_000_001, 99_000_002]


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("longhaul")


@pytest.fixture(scope="session")
def redis_url(work_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = start_redis(port, work_dir / "redis", work_dir / "logs")
    yield f"redis://127.0.0.1:{port}/0"
    proc.stop()


@pytest.fixture(scope="session")
def base_settings(redis_url: str, work_dir: Path) -> Iterator[Settings]:
    s3_port = free_port(also_free=(10000,))
    settings = Settings(
        redis_url=redis_url,
        s3_endpoint=f"http://127.0.0.1:{s3_port}",
        s3_access_key_id="test-key",
        s3_secret_access_key="test-secret",
        delay_min_ms=0,
        delay_max_ms=30,
        upload_part_size=5 * 1024 * 1024,
        heartbeat_s=15,
        worker_concurrency=8,
        lock_ms=2_000,
        stalled_check_ms=1_000,
        retry_base_ms=200,
        shutdown_grace_s=1,
        api_keys_file=str(credentials.write_key_file(work_dir / "api-keys")),
        # Webhooks to the tests' receivers, on loopback.
        webhook_secret=credentials.WEBHOOK_SECRET,
        webhook_allowed_hosts="127.0.0.1",
        # Tests start many jobs at once; the limits get tests of their own.
        tenant_max_active_jobs=0,
        tenant_requests_per_s=0,
    )
    proc = start_seaweedfs(
        work_dir / "seaweedfs",
        work_dir / "logs",
        s3_port,
        settings.s3_access_key_id,
        settings.s3_secret_access_key,
        [settings.source_bucket, settings.artifact_bucket],
    )

    async def seed() -> None:
        async with s3_session().client("s3", **s3_client_kwargs(settings)) as s3:
            await seed_sources(s3, settings, SMALL_IDS + LARGE_IDS)

    asyncio.run(seed())
    yield settings
    proc.stop()


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """Settings of this test: its own key prefix, so its own jobs, events and queue."""
    return base_settings.replace(redis_prefix=f"t-{uuid.uuid4().hex[:12]}")


class Stack:
    """An in-process server and worker pool for one test, with a client stub."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.server = LonghaulServer(settings.replace(grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0"), clock)
        self.workers: list[WorkerRunner] = []
        self.channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.DownloadServiceStub | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def start(self, workers: int = 1) -> Stack:
        await self.server.start()
        for _ in range(workers):
            await self.add_worker()
        self.channel = credentials.channel(self.address)
        self.stub = pb_grpc.DownloadServiceStub(self.channel)
        return self

    async def add_worker(self, **changes: object) -> WorkerRunner:
        changes.setdefault("worker_name", f"test-worker-{len(self.workers) + 1}")
        runner = WorkerRunner(self.settings.replace(**changes))
        await runner.start()
        self.workers.append(runner)
        return runner

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        for runner in self.workers:
            await runner.stop()
        await self.server.stop()


@pytest.fixture
async def make_stack(settings: Settings) -> AsyncIterator:
    """Builds stacks with per-test setting changes, e.g. `await make_stack(delay_min_ms=5000)`."""
    stacks: list[Stack] = []

    async def make(workers: int = 1, clock: Callable[[], float] = time.time, **changes: object) -> Stack:
        stack = await Stack(settings.replace(**changes), clock).start(workers)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        await stack.stop()


@pytest.fixture
async def stack(make_stack) -> Stack:
    return await make_stack()
