"""The blocking client: the asyncio client run on a private event loop in a background thread, so
both share one implementation and behave the same."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from longhaul.download.v1 import download_pb2 as pb
from longhaul_client.aio import DEFAULT_TARGET, AsyncClient, Event

T = TypeVar("T")


class Client:
    """A Longhaul client for blocking code; same methods and arguments as `AsyncClient`."""

    def __init__(self, target: str = DEFAULT_TARGET, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="longhaul-client", daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:  # the channel must be created on the loop that uses it
            return AsyncClient(target, **options)

        self._client = self._run(make())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _iterate(self, iterator: AsyncGenerator[T, None]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._run(iterator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(iterator.aclose())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def initiate(
        self, file_ids: Iterable[int], *, request_id: str | None = None, priority: str = "normal", callback_url: str = ""
    ) -> pb.Job:
        return self._run(
            self._client.initiate(list(file_ids), request_id=request_id, priority=priority, callback_url=callback_url)
        )

    def status(self, job_id: str) -> pb.Job:
        return self._run(self._client.status(job_id))

    def cancel(self, job_id: str) -> pb.Job:
        return self._run(self._client.cancel(job_id))

    def retry(self, job_id: str, *, request_id: str | None = None) -> pb.Job:
        return self._run(self._client.retry(job_id, request_id=request_id))

    def list(self, *, page_size: int = 100, limit: int | None = None) -> Iterator[pb.Job]:
        return self._iterate(self._client.list(page_size=page_size, limit=limit))

    def availability(self, file_id: int) -> pb.CheckAvailabilityResponse:
        return self._run(self._client.availability(file_id))

    def watch(self, job_id: str, *, after_seq: int = 0, heartbeats: bool = False) -> Iterator[Event]:
        return self._iterate(self._client.watch(job_id, after_seq=after_seq, heartbeats=heartbeats))

    def wait(self, job_id: str, on_event: Callable[[Event], Any] | None = None) -> pb.Job:
        return self._run(self._client.wait(job_id, on_event))

    def download(
        self, job: pb.Job | str, path: str | Path, on_progress: Callable[[int, int], Any] | None = None
    ) -> Path:
        return self._run(self._client.download(job, path, on_progress))
