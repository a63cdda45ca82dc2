"""Envoy's memory per open stream, and whether it gives it back once the streams close.

`streams` SSE subscribers (GET /v1/download/{id}/events, one HTTP/1.1 connection each, as a browser's
EventSource), as many grpc-web WatchProgress calls (one connection each, as browsers make them), and
as many native gRPC ones on one HTTP/2 connection (as a service watching many jobs makes them) are
opened through Envoy to one server and held; then closed. Envoy's resident memory and its heap's
allocated bytes (admin /memory) are read before, while they are open, and once Envoy counts no
open downstream connection again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import struct
import time
import urllib.request
from collections.abc import Awaitable, Callable

import aiohttp
import grpc

from bench.env import TENANT, BenchEnv
from bench.idle import rss_mb
from bench.report import Row
from jobs.connections import redis_client
from jobs.store import JobStore
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc

_WATCH_PATH = "/longhaul.download.v1.DownloadService/WatchProgress"


def admin_get(admin: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=10) as reply:
        return reply.read().decode()


def _memory(pid: int, admin: str) -> tuple[float, float]:
    """(resident MB, heap MB allocated) of Envoy."""
    return rss_mb(pid), int(json.loads(admin_get(admin, "/memory"))["allocated"]) / 2**20


def _open_connections(admin: str) -> int:
    stats = admin_get(admin, "/stats?filter=^http.public.downstream_cx_active$")
    return int(stats.split(":")[1]) if ":" in stats else 0


async def _hold_grpc(target: str, token: str, job_ids: list[str], until_closed: Callable[[], Awaitable[None]]) -> int:
    """The same as _hold, the streams native gRPC on one connection."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DownloadServiceStub(channel)
        metadata = (("authorization", f"Bearer {token}"),)
        calls = [stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id), metadata=metadata) for job_id in job_ids]
        for first in await asyncio.gather(*(call.read() for call in calls)):
            if not isinstance(first, pb.WatchProgressResponse):
                raise RuntimeError(f"a gRPC stream ended before its first message: {first}")
        await until_closed()
        for call in calls:
            call.cancel()
    return len(calls)


async def _hold(target: str, token: str, job_ids: list[str], open_one: str, until_closed: Callable[[], Awaitable[None]]) -> int:
    """Opens a stream per job (each on its own connection), waits for every first message, runs
    `until_closed` while they are open, then closes them. Returns how many opened."""
    headers = {"authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    opening = asyncio.Semaphore(200)
    async with aiohttp.ClientSession(f"http://{target}", connector=connector, headers=headers) as session:
        replies: list[aiohttp.ClientResponse] = []

        async def one(job_id: str) -> None:
            async with opening:
                if open_one == "sse":
                    reply = await session.get(f"/v1/download/{job_id}/events")
                else:
                    message = pb.WatchProgressRequest(job_id=job_id).SerializeToString()
                    body = struct.pack(">BI", 0, len(message)) + message
                    grpc_web = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
                    reply = await session.post(_WATCH_PATH, data=body, headers=grpc_web)
                replies.append(reply)
                if reply.status != 200 or not await reply.content.readany():
                    raise RuntimeError(f"a {open_one} stream got {reply.status} and no first message")

        await asyncio.gather(*(one(job_id) for job_id in job_ids))
        await until_closed()
        for reply in replies:
            reply.close()
    return len(replies)


async def _measure_into(sink: list[tuple[float, float]], pid: int, admin: str, hold_s: float) -> None:
    await asyncio.sleep(hold_s)
    sink.append(_memory(pid, admin))


def run(env: BenchEnv, streams: int, hold_s: float) -> list[Row]:
    _, address = env.start_server()
    envoy, target, admin = env.start_envoy_with_admin(address)

    async def create() -> list[str]:
        async with redis_client(env.settings) as redis:
            store = JobStore(redis, env.settings)
            batch = await asyncio.gather(*(store.create(TENANT, [70_000]) for _ in range(streams)))
            return [fields["id"] for fields, _ in batch]

    rows = []
    kinds = (
        ("sse", "SSE (REST) streams, one connection each"),
        ("grpc-web", "grpc-web streams, one connection each"),
        ("grpc", "gRPC streams, all on one connection"),
    )
    for kind, what in kinds:
        job_ids = asyncio.run(create())
        idle_connections = _open_connections(admin)
        before = _memory(envoy.pid, admin)
        during: list[tuple[float, float]] = []
        measure = functools.partial(_measure_into, during, envoy.pid, admin, hold_s)
        if kind == "grpc":
            opened = asyncio.run(_hold_grpc(target, env.token, job_ids, measure))
        else:
            opened = asyncio.run(_hold(target, env.token, job_ids, kind, measure))
        deadline = time.monotonic() + 60
        while _open_connections(admin) > idle_connections and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(hold_s)  # what Envoy keeps once they are gone
        after = _memory(envoy.pid, admin)
        rss_kb = (during[0][0] - before[0]) * 1024 / opened
        heap_kb = (during[0][1] - before[1]) * 1024 / opened
        rows.append(
            Row(
                f"Envoy's memory per open {what} ({opened:,} open)",
                f"{rss_kb:.1f} kB resident, {heap_kb:.1f} kB of heap in use",
                f"resident {before[0]:.0f} -> {during[0][0]:.0f} -> {after[0]:.0f} MB after they closed; "
                f"heap in use {before[1]:.0f} -> {during[0][1]:.0f} -> {after[1]:.0f} MB",
                "",
                "(report)",
                None,
            )
        )
    return rows
