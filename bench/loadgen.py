"""Load generators that run in their own processes, so the server under test does not share a
Python interpreter (or its GIL) with the load. Each sends pre-serialized requests over one channel
with a fixed number of calls in flight, for a fixed time."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import time
from dataclasses import dataclass

import grpc


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
            latencies: list[float] = []
            errors = 0
            start = time.perf_counter()
            measure_from = start + load.warmup_s
            stop_at = measure_from + load.duration_s

            async def caller() -> None:
                nonlocal errors
                while (now := time.perf_counter()) < stop_at:
                    try:
                        await call(load.request, timeout=10, metadata=load.metadata)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    if now >= measure_from:
                        latencies.append(time.perf_counter() - now)

            await asyncio.gather(*(caller() for _ in range(load.in_flight)))
            return len(latencies), errors, latencies

    return asyncio.run(main())


def unary(load: UnaryLoad, processes: int) -> tuple[float, list[float], int]:
    """Splits `in_flight` over `processes`; returns (calls per second, latencies, errors)."""
    share = dataclasses.replace(load, in_flight=max(load.in_flight // processes, 1))
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_run_unary, [share] * processes)
    calls = sum(r[0] for r in results)
    latencies = [latency for r in results for latency in r[2]]
    return calls / load.duration_s, latencies, sum(r[1] for r in results)
