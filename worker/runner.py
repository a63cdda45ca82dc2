"""A worker process's engine: takes jobs from the queue, runs each, records the outcome, and stops
running jobs that are cancelled anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import uuid
from typing import Any

from bullmq import Job as QueueJob

from jobs.connections import redis_client, s3_client_kwargs, s3_session
from jobs.errors import RunSuperseded
from jobs.model import F, EventType, State
from jobs.queue import JobQueue
from jobs.settings import Settings
from jobs.store import JobStore, finish_fields
from worker.pipeline import PermanentJobError, build_archive
from worker.progress import Progress

log = logging.getLogger(__name__)


class WorkerRunner:
    """Runs jobs from the queue until `stop()`.

    Lifecycle: `start()` connects and begins taking jobs; `stop()` stops intake, lets running jobs
    finish within the grace period, then cancels what is left and closes connections.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self._redis = redis_client(settings)
        self._store = JobStore(self._redis, settings)
        self._queue = JobQueue(settings)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._exit_stack = contextlib.AsyncExitStack()
        self._s3: Any = None
        self._worker: Any = None
        self._cancel_listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._s3 = await self._exit_stack.enter_async_context(
            s3_session().client("s3", **s3_client_kwargs(self.settings))
        )
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._store.keys.cancel_channel)
        self._cancel_listener = asyncio.create_task(self._listen_for_cancels(pubsub))
        self._worker = self._queue.worker(self._process, self.name)
        log.info("worker %s taking jobs from queue %r", self.name, self.settings.queue_name)

    async def stop(self) -> None:
        if self._worker is not None:
            # close() stops intake and returns once the running jobs have ended. It is called once
            # only: bullmq's close() spins forever if a second call's teardown is cancelled.
            closing = asyncio.create_task(self._worker.close())
            deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace_s
            while not closing.done():
                # close() cancels the idle blocking read in flight when it starts; one that begins
                # just after would block for bullmq's drainDelay (5 s), so cancel that one too.
                waiting = self._worker.waiting
                if waiting is not None and not waiting.done():
                    waiting.cancel()
                if asyncio.get_running_loop().time() >= deadline and self._running:
                    log.warning("%d jobs still running after the grace period; stopping them", len(self._running))
                    for task in self._running.values():
                        task.cancel()
                await asyncio.wait([closing], timeout=0.1)
            await closing
        if self._cancel_listener is not None:
            self._cancel_listener.cancel()
            await asyncio.gather(self._cancel_listener, return_exceptions=True)
        await self._queue.close()
        await self._exit_stack.aclose()
        await self._redis.aclose()

    async def _process(self, queue_job: QueueJob, _token: str) -> None:
        job_id = queue_job.data["job_id"]
        run_token = uuid.uuid4().hex
        record = await self._store.claim(job_id, self.name, run_token)
        if record is None:
            log.info("job %s is already over (cancelled, finished or expired); skipping", job_id)
            return
        task = asyncio.create_task(self._run(job_id, run_token))
        self._running[job_id] = task
        try:
            await task
        except asyncio.CancelledError:
            if job_id not in self._cancelled:
                raise
            log.info("job %s cancelled while running", job_id)
        finally:
            self._running.pop(job_id, None)
            self._cancelled.discard(job_id)

    async def _run(self, job_id: str, token: str) -> None:
        s = self.settings
        paced_s = random.uniform(s.delay_min_ms, s.delay_max_ms) / 1000
        progress = Progress(self._store, job_id, token, paced_s)
        try:
            file_ids = await self._store.file_ids(job_id)
            result = await build_archive(self._s3, s, job_id, file_ids, progress)
        except RunSuperseded as superseded:
            log.info("%s", superseded)
            return
        except PermanentJobError as error:
            await self._finish(job_id, token, State.FAILED, error.message, {"code": error.code, "retryable": False})
            return
        except Exception as error:
            log.exception("job %s failed", job_id)
            await self._finish(
                job_id, token, State.FAILED, f"the download could not be prepared: {error}",
                {"code": "INTERNAL", "retryable": True},
            )
            return
        included = sum(1 for f in result.files if f.status == "INCLUDED")
        fields = {
            F.PERCENT: "100",
            F.FILES_DONE: progress.files_done,
            F.BYTES_DONE: progress.bytes_done,
            F.RESULT: result.to_json(),
        }
        message = f"ready: {included} of {len(result.files)} files, {result.size_bytes} bytes"
        await self._finish(job_id, token, State.COMPLETED, message, None, fields)

    async def _finish(
        self,
        job_id: str,
        token: str,
        state: State,
        message: str,
        error: dict[str, Any] | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        fields = finish_fields(state, self.settings, message) | (extra or {})
        if error is not None:
            fields[F.ERROR] = json.dumps({"message": message, **error})
        # The final write must land even if the worker is told to stop right now.
        try:
            await asyncio.shield(self._store.report(job_id, token, fields, event=EventType.STATE_CHANGED))
        except RunSuperseded as superseded:
            log.info("result of %s not recorded: %s", job_id, superseded)

    async def _listen_for_cancels(self, pubsub: Any) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    job_id = message["data"]
                    task = self._running.get(job_id)
                    if task is not None:
                        self._cancelled.add(job_id)
                        task.cancel()
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except Exception:
                # The next progress write of a cancelled job fails anyway, so a missed message
                # delays a cancel by at most a second.
                log.warning("cancel listener lost Redis; reconnecting", exc_info=True)
                await asyncio.sleep(1)
