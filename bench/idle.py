"""Idle watchers: how many open WatchProgress streams one server process holds, what each costs in
memory, and how many Redis connections they take (the design: one pub/sub connection for all). The
baseline is the same number of streams on a bare grpc.aio server (bench/bare_watch_server.py): what
gRPC itself costs per stream, which no code of ours can go below."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.env import TENANT, BenchEnv
from bench.report import Row
from bench.watchers import WatcherPool
from devstack.processes import ManagedProcess, free_port, port_open
from devstack.services import ROOT
from jobs.connections import redis_client
from jobs.store import JobStore

WATCH_PROCESSES = 4


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _redis_clients(env: BenchEnv) -> int:
    async with redis_client(env.settings) as redis:
        return int((await redis.info("clients"))["connected_clients"]) - 1  # less this one


class Held:
    """Streams held open by one server process, what its RSS did, and what `meanwhile` saw."""

    def __init__(
        self,
        pid: int,
        address: str,
        metadata: tuple[tuple[str, str], ...],
        job_ids: list[str],
        meanwhile: Callable[[], int | None],
        hold_s: float,
    ) -> None:
        self.rss_before = rss_mb(pid)
        pool = WatcherPool(address, metadata, job_ids, WATCH_PROCESSES)
        opened_at = time.monotonic()
        self.opened = pool.start(timeout_s=600)
        self.open_s = time.monotonic() - opened_at
        time.sleep(hold_s)  # idle: heartbeats only
        self.rss_after = rss_mb(pid)
        self.seen = meanwhile()
        pool.stop()

    @property
    def kb_each(self) -> float:
        return (self.rss_after - self.rss_before) * 1024 / max(self.opened, 1)


def _bare(env: BenchEnv, streams: int, hold_s: float) -> Held:
    port = free_port()
    argv = [sys.executable, "-m", "bench.bare_watch_server", str(port)]
    bare = ManagedProcess("bare-watch-server", argv, env.logs / "bare-watch-server.log", cwd=ROOT).start()
    try:
        bare.wait_until(lambda: port_open(port), 30, "serving")
        return Held(bare.pid, f"127.0.0.1:{port}", (), [f"bare-{i}" for i in range(streams)], lambda: None, hold_s)
    finally:
        bare.stop()


def run(env: BenchEnv, streams: int, hold_s: float) -> list[Row]:
    server, address = env.start_server()

    async def create() -> list[str]:
        async with redis_client(env.settings) as redis:
            store = JobStore(redis, env.settings)
            ids: list[str] = []
            for start in range(0, streams, 500):
                batch = await asyncio.gather(*(store.create(TENANT, [70_000]) for _ in range(min(500, streams - start))))
                ids += [fields["id"] for fields, _ in batch]
            return ids

    job_ids = asyncio.run(create())
    time.sleep(1)
    clients_before = asyncio.run(_redis_clients(env))
    ours = Held(server.pid, address, env.metadata, job_ids, lambda: asyncio.run(_redis_clients(env)), hold_s)
    bare = _bare(env, streams, hold_s)
    return [
        Row(
            "idle WatchProgress streams held by one server process",
            f"{ours.opened:,} open (opened in {ours.open_s:.1f} s); {ours.kb_each:.1f} kB RSS each "
            f"({ours.rss_before:.0f} -> {ours.rss_after:.0f} MB)",
            f"a bare grpc.aio server: {bare.kb_each:.1f} kB each ({bare.opened:,} open)",
            f"{ours.kb_each / bare.kb_each:.2f} x",
            f">= {streams:,} streams, <= 15 kB each",
            ours.opened >= streams and ours.kb_each <= 15,
        ),
        Row(
            "Redis connections held by the server",
            f"{clients_before} before the streams, {ours.seen} with them",
            "the original design: one per SSE subscriber",
            "",
            "a handful, whatever the number of streams",
            ours.seen is not None and ours.seen <= 10,
        ),
    ]
