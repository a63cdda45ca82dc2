"""Idle watchers: how many open WatchProgress streams one server process holds, what each costs in
memory, and how many Redis connections they take (the design: one pub/sub connection for all)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.env import TENANT, BenchEnv
from bench.report import Row
from bench.watchers import WatcherPool
from jobs.connections import redis_client
from jobs.store import JobStore

WATCH_PROCESSES = 4
HOLD_S = 5.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _redis_clients(env: BenchEnv) -> int:
    async with redis_client(env.settings) as redis:
        return int((await redis.info("clients"))["connected_clients"]) - 1  # less this one


def run(env: BenchEnv, streams: int) -> list[Row]:
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
    rss_before, clients_before = rss_mb(server.pid), asyncio.run(_redis_clients(env))
    pool = WatcherPool(address, env.metadata, job_ids, WATCH_PROCESSES)
    opened_at = time.monotonic()
    opened = pool.start(timeout_s=300)
    open_s = time.monotonic() - opened_at
    time.sleep(HOLD_S)  # idle: heartbeats only
    rss_after, clients_after = rss_mb(server.pid), asyncio.run(_redis_clients(env))
    pool.stop()
    per_stream_kb = (rss_after - rss_before) * 1024 / max(opened, 1)
    return [
        Row(
            "idle WatchProgress streams held by one server process",
            f"{opened:,} open (all opened in {open_s:.1f} s); {per_stream_kb:.1f} kB RSS each "
            f"({rss_before:.0f} -> {rss_after:.0f} MB)",
            "",
            "",
            f">= {streams:,} streams",
            opened >= streams,
        ),
        Row(
            "Redis connections held by the server",
            f"{clients_before} before the streams, {clients_after} with them",
            "the original design: one per SSE subscriber",
            "",
            "a handful, whatever the number of streams",
            clients_after <= 10,
        ),
    ]
