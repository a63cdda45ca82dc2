"""Load generators that run in their own processes, so the server under test does not share a
Python interpreter (or its GIL) with the load. Each sends pre-serialized requests over one channel
with a fixed number of calls in flight, for a fixed time."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import multiprocessing
import multiprocessing.pool
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import grpc

L = TypeVar("L", "UnaryLoad", "HttpLoad")


@dataclass
class UnaryLoad:
    target: str
    method: str  # "/package.Service/Method"
    request: bytes
    in_flight: int
    duration_s: float
    metadata: tuple[tuple[str, str], ...] = ()
    warmup_s: float = 0.5


def _run_unary(load: UnaryLoad) -> tuple[int, int, list[float]]:
    """(calls completed in the measured window, errors, latencies in seconds)."""

    async def main() -> tuple[int, int, list[float]]:
        async with grpc.aio.insecure_channel(load.target) as channel:
            call = channel.unary_unary(load.method, request_serializer=None, response_deserializer=None)

            async def one() -> bool:
                try:
                    await call(load.request, timeout=10, metadata=load.metadata)
                except grpc.aio.AioRpcError:
                    return False
                return True

            return await _drive(one, load)

    return asyncio.run(main())


async def _drive(one: Callable[[], Awaitable[bool]], load: UnaryLoad | HttpLoad) -> tuple[int, int, list[float]]:
    """`one()` again and again from `load.in_flight` callers, for the warm-up and then the measured
    window: (calls that succeeded in the window, failed calls, the window's latencies in seconds)."""
    latencies: list[float] = []
    errors = 0
    # A short run (the smoke run's) warms up no longer than it measures.
    measure_from = time.perf_counter() + min(load.warmup_s, load.duration_s)
    stop_at = measure_from + load.duration_s

    async def caller() -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            if not await one():
                errors += 1
            elif now >= measure_from:
                latencies.append(time.perf_counter() - now)

    await asyncio.gather(*(caller() for _ in range(load.in_flight)))
    return len(latencies), errors, latencies


def unary(load: UnaryLoad, processes: int) -> tuple[float, list[float], int]:
    """Splits `in_flight` over `processes`; returns (calls per second, latencies, errors)."""
    return _spread(_run_unary, load, processes)


@dataclass
class HttpLoad:
    url: str
    in_flight: int
    duration_s: float
    headers: tuple[tuple[str, str], ...] = ()
    warmup_s: float = 0.5
    json_body: bytes = b""  # POSTed when given, else a GET


def _run_http(load: HttpLoad) -> tuple[int, int, list[float]]:
    """GETs of `load.url` (POSTs of `load.json_body`) over keep-alive connections, one per call in
    flight; a reply other than 200 counts as an error."""

    async def main() -> tuple[int, int, list[float]]:
        connector = aiohttp.TCPConnector(limit=load.in_flight)
        async with aiohttp.ClientSession(connector=connector, headers=dict(load.headers)) as session:

            async def one() -> bool:
                if load.json_body:
                    request = session.post(load.url, data=load.json_body, headers={"content-type": "application/json"})
                else:
                    request = session.get(load.url)
                async with request as reply:
                    await reply.read()
                return reply.status == 200

            return await _drive(one, load)

    return asyncio.run(main())


def http(load: HttpLoad, processes: int) -> tuple[float, list[float], int]:
    """As `unary`, for HTTP GETs."""
    return _spread(_run_http, load, processes)


# The load processes, started once and kept for every measurement after: starting Python with grpc
# and aiohttp costs about a second a process, which a run of many short measurements paid each time.
_pools: dict[int, multiprocessing.pool.Pool] = {}


def _pool(processes: int) -> multiprocessing.pool.Pool:
    pool = _pools.get(processes)
    if pool is None:
        pool = _pools[processes] = multiprocessing.get_context("spawn").Pool(processes)
        atexit.register(pool.terminate)
    return pool


def _spread(run: Callable[[L], tuple[int, int, list[float]]], load: L, processes: int) -> tuple[float, list[float], int]:
    share = dataclasses.replace(load, in_flight=max(load.in_flight // processes, 1))
    # One task each: a process runs its share for the whole window, so each takes one.
    results = _pool(processes).map(run, [share] * processes, chunksize=1)
    calls = sum(r[0] for r in results)
    latencies = [latency for r in results for latency in r[2]]
    return calls / load.duration_s, latencies, sum(r[1] for r in results)
