"""Watcher processes for the streaming benchmarks: each opens WatchProgress streams for its share of
the jobs, says when every stream has its snapshot, and records how late each progress event arrived
(the writer puts its wall-clock send time in the event's message). Also the polling baseline."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from dataclasses import dataclass
from typing import Any

import grpc

from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc

STAMP = "t="
_STREAMS_PER_CHANNEL = 100  # below gRPC's usual per-connection stream limit
# Streams a process has asked for and not yet had a snapshot on. Tens of thousands asked for in the
# same instant exceed what a server keeps pending (SERVER_OPTIONS) and are cancelled; watchers
# arriving as fast as the server takes them measure what it holds.
_OPENING = 500


def stamp() -> str:
    return f"{STAMP}{time.time():.6f}"


def _age(message: str) -> float | None:
    return time.time() - float(message[len(STAMP):]) if message.startswith(STAMP) else None


@dataclass
class Watch:
    target: str
    job_ids: list[str]
    metadata: tuple[tuple[str, str], ...]


def _watch(watch: Watch, ready: Any, stop: Any, results: Any) -> None:
    async def main() -> None:
        latencies: list[float] = []
        opened = 0
        channels = [grpc.aio.insecure_channel(watch.target) for _ in range(math.ceil(len(watch.job_ids) / _STREAMS_PER_CHANNEL))]

        opening = asyncio.Semaphore(_OPENING)

        async def follow(index: int, job_id: str) -> None:
            nonlocal opened
            stub = pb_grpc.DownloadServiceStub(channels[index // _STREAMS_PER_CHANNEL])
            await opening.acquire()
            async for event in stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id), metadata=watch.metadata):
                if event.type == pb.EVENT_TYPE_SNAPSHOT:
                    opened += 1
                    opening.release()
                elif event.type == pb.EVENT_TYPE_PROGRESS and (age := _age(event.job.message)) is not None:
                    latencies.append(age)

        tasks = [asyncio.create_task(follow(i, j)) for i, j in enumerate(watch.job_ids)]
        while opened < len(watch.job_ids):
            for task in tasks:
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            await asyncio.sleep(0.05)
        ready.put(opened)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
        results.put(latencies)

    asyncio.run(main())


def _poll(watch: Watch, interval_s: float, ready: Any, stop: Any, results: Any) -> None:
    """The original design: GetStatus every `interval_s` per job; a change is seen at the next poll."""

    async def main() -> None:
        latencies: list[float] = []
        calls = 0
        async with grpc.aio.insecure_channel(watch.target) as channel:
            stub = pb_grpc.DownloadServiceStub(channel)

            async def poll(job_id: str) -> None:
                nonlocal calls
                seen = ""
                await asyncio.sleep(interval_s * (hash(job_id) % 1000) / 1000)  # spread, as real clients are
                while not stop.is_set():
                    job = (await stub.GetStatus(pb.GetStatusRequest(job_id=job_id), metadata=watch.metadata)).job
                    calls += 1
                    if job.message != seen and (age := _age(job.message)) is not None:
                        latencies.append(age)
                    seen = job.message
                    await asyncio.sleep(interval_s)

            ready.put(len(watch.job_ids))
            await asyncio.gather(*(poll(j) for j in watch.job_ids))
        results.put(latencies)

    asyncio.run(main())


class WatcherPool:
    """Watching (or polling) processes, started together, stopped together."""

    def __init__(
        self,
        target: str,
        metadata: tuple[tuple[str, str], ...],
        job_ids: list[str],
        processes: int,
        poll_interval_s: float = 0.0,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready, self._results, self._stop = context.Queue(), context.Queue(), context.Event()
        share = math.ceil(len(job_ids) / processes)
        self._procs = []
        for index in range(processes):
            watch = Watch(target, job_ids[index * share:(index + 1) * share], metadata)
            if poll_interval_s:
                args: tuple[Any, ...] = (watch, poll_interval_s, self._ready, self._stop, self._results)
                self._procs.append(context.Process(target=_poll, args=args))
            else:
                self._procs.append(context.Process(target=_watch, args=(watch, self._ready, self._stop, self._results)))

    def start(self, timeout_s: float = 120) -> int:
        for proc in self._procs:
            proc.start()
        return sum(self._ready.get(timeout=timeout_s) for _ in self._procs)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid]

    def stop(self) -> list[float]:
        self._stop.set()
        latencies = [x for _ in self._procs for x in self._results.get(timeout=60)]
        for proc in self._procs:
            proc.join(10)
        return latencies
