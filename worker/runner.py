"""A worker process's engine: relays created jobs to the queue, takes jobs from it, runs each,
records the outcome, and stops running jobs that are cancelled anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from typing import Any

from bullmq import Job as QueueJob
from bullmq.custom_errors import DelayedError
from opentelemetry import trace
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs import metrics, runtime, tracing
from jobs.connections import multiplexed_redis, redis_client, s3_client_kwargs, s3_session, watch_failovers
from jobs.deliveries import WebhookDeliveries
from jobs.errors import RunSuperseded
from jobs.logs import bind
from jobs.model import ErrorCode, EventType, F, Phase, State
from jobs.queue import JobQueue
from jobs.settings import Settings
from jobs.store import JobStore, finish_fields
from jobs.workers import WorkerRegistry
from worker.failures import retry_delay_ms, transient_code
from worker.housekeeping import Housekeeper
from worker.pipeline import PermanentJobError, build_archive
from worker.progress import Progress
from worker.relay import Relay
from worker.webhooks import WebhookSender

log = logging.getLogger(__name__)

# How long a stopping worker waits for the queue after the grace period, to hand running jobs back.
_HAND_BACK_S = 5.0

# How long a run's final state change (a result, a failure, a hand-back) is retried while Redis is
# unreachable before the runner gives up on it (and bullmq, then the reconciler, take over).
_RECORD_PATIENCE_S = 60.0

_TRACER = trace.get_tracer("longhaul.worker")


async def cancel_until_done(tasks: list[asyncio.Task[Any]], every_s: float = 1.0) -> None:
    """Cancels the tasks and waits until they have ended, cancelling again any that carries on.

    A library can swallow a cancellation (seen once: the housekeeping loop took its next nap with
    the cancellation still counted, and a worker's stop waited for it forever). A task that keeps
    looping that way ends at the next cancellation, which reaches it at its next await.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
    await asyncio.gather(*tasks, return_exceptions=True)  # all ended: collects their exceptions


class WorkerRunner:
    """Runs jobs from the queue until `stop()`.

    Lifecycle: `start()` connects and begins taking jobs; `stop()` stops intake, lets running jobs
    finish within the grace period, then cancels what is left and closes connections.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self._redis = redis_client(settings)
        self._commands = multiplexed_redis(settings)
        self._store = JobStore(self._redis, settings, self._commands)
        self._queue = JobQueue(settings)
        self._relay = Relay(self._redis, self._store.keys, self._queue)
        self._webhooks = WebhookSender(settings, WebhookDeliveries(self._redis, self._store.keys))
        self._registry = WorkerRegistry(self._redis, self._store.keys)
        self._running: dict[str, asyncio.Task[int | None]] = {}  # job id -> its run
        self._cancelled: set[asyncio.Task[int | None]] = set()  # runs stopped by a user's cancel
        self._superseded: set[asyncio.Task[int | None]] = set()  # runs stopped by a later delivery
        self._handing_back = False
        self._recording: set[asyncio.Task[None]] = set()  # state changes being written
        self._exit_stack = contextlib.AsyncExitStack()
        self._s3: Any = None
        self._worker: Any = None
        self._cancel_listener: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._reporting: asyncio.Task[None] | None = None
        self._delivering: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s3 = await self._exit_stack.enter_async_context(s3_session().client("s3", **s3_client_kwargs(self.settings)))
        self._s3 = tracing.TracedS3(s3) if tracing.enabled() else s3
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._store.keys.cancel_channel)
        self._cancel_listener = asyncio.create_task(self._listen_for_cancels(pubsub))
        housekeeper = Housekeeper(self.settings, self._redis, self._store, self._queue, self._s3)
        self._housekeeping = asyncio.create_task(housekeeper.run())
        self._delivering = asyncio.create_task(self._webhooks.run())
        self._worker = self._queue.worker(self._process, self.name)
        self._relay.start()
        self._reporting = asyncio.create_task(self._registry.keep_reporting(self.name, lambda: list(self._running)))
        if failovers := watch_failovers(self.settings, self._redis, self._commands, self._queue.connection_pool):
            self._exit_stack.push_async_callback(failovers.close)
        lag = asyncio.create_task(runtime.measure_loop_lag())
        self._exit_stack.callback(lag.cancel)
        runtime.measure_gc_pauses()
        log.info("worker %s taking jobs from queue %r", self.name, self.settings.queue_name)

    async def stop(self) -> None:
        """Stops intake, lets running jobs finish within the grace period, then hands the rest
        back to the queue so another worker takes them at once (not after the lock lapses).

        Safe to call twice (the second call waits for the first) and before `start()`: a signal
        handler and a `finally` may both call it, and bullmq's close() must run once only."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        await self._relay.close()
        if self._worker is not None:
            await self._close_worker()
        background = [
            task for task in (self._cancel_listener, self._housekeeping, self._reporting, self._delivering) if task is not None
        ]
        await cancel_until_done([*background, *self._recording])
        if self._reporting is not None:
            with contextlib.suppress(Exception):  # Redis away: the entry ages out by itself
                await self._registry.leave(self.name)
        await self._queue.close()
        await self._exit_stack.aclose()
        await self._commands.aclose()
        await self._redis.aclose()

    async def _close_worker(self) -> None:
        # close() stops intake and returns once the running jobs have ended.
        closing = asyncio.create_task(self._worker.close())
        loop = asyncio.get_running_loop()
        hand_back_at = loop.time() + self.settings.shutdown_grace_s
        give_up_at = hand_back_at + _HAND_BACK_S
        while not closing.done():
            # close() cancels the idle blocking read in flight when it starts; one that begins
            # just after would block for bullmq's drainDelay (5 s), so cancel that one too.
            waiting = self._worker.waiting
            if waiting is not None and not waiting.done():
                waiting.cancel()
            now = loop.time()
            if now >= hand_back_at and self._running and not self._handing_back:
                log.warning("handing %d running jobs back to the queue", len(self._running))
                self._handing_back = True
                for task in self._running.values():
                    task.cancel()
            if now >= give_up_at:
                # Only an unreachable Redis gets here: bullmq retries each call for minutes. The
                # jobs not handed back return to the queue when their locks lapse.
                log.warning("the queue did not answer within %.0f s of the hand-back; stopping without it", _HAND_BACK_S)
                self._worker.cancelProcessing()
                give_up_at = float("inf")
            await asyncio.wait([closing], timeout=0.1)
        await closing

    async def _process(self, queue_job: QueueJob, queue_token: str) -> None:
        job_id = queue_job.data["job_id"]
        bind(job_id=job_id)  # this task's log lines, and its run's
        await self._stop_earlier_run(job_id)
        run_token = uuid.uuid4().hex
        record = await self._store.claim(job_id, self.name, run_token, queue_job.data.get("retries", 0))
        if record is None:
            log.info("job %s is already over (cancelled, finished, expired or retried since); skipping", job_id)
            return
        bind(tenant=record.get(F.TENANT, ""))
        try:
            await self._claimed(queue_job, queue_token, job_id, run_token, record)
        finally:
            if record[F.HOOK_URL]:
                self._webhooks.wake()  # the job may have ended: its delivery is due now

    async def _claimed(self, queue_job: QueueJob, queue_token: str, job_id: str, run_token: str, record: dict[str, str]) -> None:
        """Runs the claimed job's attempt, or fails it when it has had too many."""
        attempt = int(record[F.ATTEMPTS])
        if attempt > self.settings.max_attempts:
            message = (
                f"gave up after {attempt - 1} attempts: each one failed or lost its worker "
                "(a worker that died or was stopped mid-job)"
            )
            await self._finish(job_id, run_token, State.FAILED, message, {"code": ErrorCode.TOO_MANY_ATTEMPTS, "retryable": True})
            return
        file_ids = json.loads(record[F.FILE_IDS])
        run = self._run(job_id, run_token, attempt, self._store.artifact_key(record), file_ids, record[F.TRACEPARENT])
        task = asyncio.create_task(run)
        self._running[job_id] = task
        self._registry.changed()
        try:
            retry_in_ms = await asyncio.wait_for(task, self.settings.attempt_timeout_s)
        except TimeoutError:
            retry_in_ms = await self._give_up_on_stuck_attempt(job_id, run_token, attempt)
        except asyncio.CancelledError:
            if task in self._superseded:
                # The queue entry belongs to the later delivery now: leave it to that one.
                raise DelayedError() from None
            if task in self._cancelled:
                log.info("job %s cancelled while running", job_id)
                return
            if not self._handing_back:
                raise
            await self._requeue(job_id, run_token, "its worker is shutting down; another worker takes over")
            retry_in_ms = 0
        finally:
            if self._running.get(job_id) is task:
                del self._running[job_id]
                self._registry.changed()
            self._cancelled.discard(task)
            self._superseded.discard(task)
        if retry_in_ms is not None:
            # The documented bullmq way to run a job again later without counting a failure.
            await queue_job.moveToDelayed(int(time.time() * 1000) + retry_in_ms, queue_token)
            raise DelayedError()

    async def _stop_earlier_run(self, job_id: str) -> None:
        """bullmq delivers a job again once its lock lapses (Redis unreachable for longer than the
        lock, a stalled event loop), possibly to this worker while its earlier run goes on. The claim
        that follows supersedes that run anyway; stopping it first means one copy runs at a time."""
        earlier = self._running.get(job_id)
        if earlier is None:
            return
        log.warning("job %s delivered again while this worker still runs it (its lock lapsed); stopping the earlier run", job_id)
        self._superseded.add(earlier)
        earlier.cancel()
        await asyncio.wait([earlier])

    async def _run(
        self, job_id: str, token: str, attempt: int, key: str, file_ids: list[int], traceparent: str
    ) -> int | None:
        """Runs one attempt; returns the delay before the next attempt, or None when done. The attempt
        is a span of its own, linked to the call that created the job (jobs/tracing.py)."""
        attributes: dict[str, str | int] = {"job_id": job_id, "job.attempt": attempt}
        with _TRACER.start_as_current_span(
            "download.attempt", kind=trace.SpanKind.CONSUMER, links=tracing.link_to(traceparent), attributes=attributes
        ):
            return await self._attempt(job_id, token, attempt, key, file_ids)

    async def _attempt(self, job_id: str, token: str, attempt: int, key: str, file_ids: list[int]) -> int | None:
        s = self.settings
        paced_s = random.uniform(s.delay_min_ms, s.delay_max_ms) / 1000
        progress = Progress(self._store, job_id, token, paced_s)
        try:
            result = await build_archive(self._s3, s, job_id, key, file_ids, progress)
        except RunSuperseded as superseded:
            log.info("%s", superseded)
            return None
        except PermanentJobError as error:
            await self._finish(job_id, token, State.FAILED, error.message, {"code": error.code, "retryable": False})
            return None
        except Exception as error:
            code = transient_code(error)
            if code is None:
                log.exception("job %s failed", job_id)
                await self._finish(
                    job_id, token, State.FAILED, f"the download could not be prepared: {error}",
                    {"code": ErrorCode.INTERNAL, "retryable": False},
                )
                return None
            if attempt >= s.max_attempts:
                message = f"gave up after {attempt} attempts; the last one failed with: {error}"
                await self._finish(job_id, token, State.FAILED, message, {"code": code, "retryable": True})
                return None
            delay_ms = retry_delay_ms(s, attempt)
            log.warning("job %s attempt %d failed (%s: %s); retrying in %d ms", job_id, attempt, code, error, delay_ms)
            message = f"attempt {attempt} of {s.max_attempts} failed ({error}); retrying in {delay_ms / 1000:.1f} s"
            await self._requeue(job_id, token, message, {"code": code, "retryable": True}, delay_ms)
            return delay_ms
        included = sum(1 for f in result.files if f.status == "INCLUDED")
        fields = {
            F.PERCENT: "100",
            F.FILES_DONE: progress.files_done,
            F.BYTES_DONE: progress.bytes_done,
            F.RESULT: result.to_json(),
            F.ERROR: "",  # an earlier attempt's error no longer applies
        }
        message = f"ready: {included} of {len(result.files)} files, {result.size_bytes} bytes"
        await self._finish(job_id, token, State.COMPLETED, message, None, fields)
        return None

    async def _give_up_on_stuck_attempt(self, job_id: str, token: str, attempt: int) -> int | None:
        """An attempt ran past ATTEMPT_TIMEOUT_S (wait_for has cancelled it): retry or fail the job."""
        limit = self.settings.attempt_timeout_s
        log.error("job %s attempt %d exceeded %.0f s; stopped", job_id, attempt, limit)
        error = {"code": ErrorCode.ATTEMPT_TIMEOUT, "retryable": True}
        if attempt >= self.settings.max_attempts:
            message = f"gave up after {attempt} attempts; the last one ran past the {limit:.0f} s limit"
            await self._finish(job_id, token, State.FAILED, message, error)
            return None
        delay_ms = retry_delay_ms(self.settings, attempt)
        message = f"attempt {attempt} ran past the {limit:.0f} s limit and was stopped; retrying in {delay_ms / 1000:.1f} s"
        await self._requeue(job_id, token, message, error, delay_ms)
        return delay_ms

    async def _requeue(
        self, job_id: str, token: str, message: str, error: dict[str, Any] | None = None, delay_ms: int = 0
    ) -> None:
        """Puts the job back to QUEUED (the queue entry is moved by the caller)."""
        fields: dict[str, Any] = {
            F.STATE: State.QUEUED,
            F.PHASE: Phase.QUEUED,
            F.MESSAGE: message,
            F.NEXT_ATTEMPT_MS: int(time.time() * 1000) + delay_ms,
        }
        await self._record_state(job_id, token, fields, message, error)
        if error is not None:
            metrics.RETRIES.labels(error["code"]).inc()

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
        await self._record_state(job_id, token, fields, message, error)

    async def _record_state(
        self, job_id: str, token: str, fields: dict[str, Any], message: str, error: dict[str, Any] | None
    ) -> None:
        if error is not None:
            fields[F.ERROR] = json.dumps({"message": message, **error})
        # A state change must land even if the worker is told to stop right now.
        recording = asyncio.create_task(self._record_through_outage(job_id, token, fields))
        self._recording.add(recording)
        recording.add_done_callback(self._recording.discard)
        try:
            await asyncio.shield(recording)
        except RunSuperseded as superseded:
            log.info("state %s of %s not recorded: %s", fields[F.STATE], job_id, superseded)
            return

    async def _record_through_outage(self, job_id: str, token: str, fields: dict[str, Any]) -> None:
        """Writes a state change, again and again while Redis is unreachable (restarting, failing
        over): a run that ends without it would leave the job RUNNING until the reconciler noticed."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + _RECORD_PATIENCE_S
        pause_s = 0.5
        call = self._store.new_call()  # every try is the same call: applied once
        while True:
            try:
                await self._store.report(job_id, token, fields, event=EventType.STATE_CHANGED, call=call)
                return
            except (RedisConnectionError, RedisTimeoutError) as error:
                if loop.time() + pause_s > give_up_at:
                    raise
                log.warning("job %s: state %s not recorded (%s); trying again in %.1f s", job_id, fields[F.STATE], error, pause_s)
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 5.0)

    async def _listen_for_cancels(self, pubsub: Any) -> None:
        while True:
            try:
                async for message in pubsub.listen():
                    job_id = message["data"]
                    task = self._running.get(job_id)
                    if task is not None:
                        self._cancelled.add(task)
                        task.cancel()
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except Exception:
                # The next progress write of a cancelled job fails anyway, so a missed message
                # delays a cancel by at most a second.
                log.warning("cancel listener lost Redis; reconnecting", exc_info=True)
                await asyncio.sleep(1)
