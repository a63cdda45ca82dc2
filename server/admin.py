"""AdminService: the operator API. Each call first checks that its caller has the operator scope
(auth.py); each change is logged with the operator who made it, whatever else the logs say."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc

from jobs.convert import Presigner, to_job
from jobs.dead_letters import DeadLetters
from jobs.deliveries import WebhookDeliveries
from jobs.errors import JobsError
from jobs.index_scan import IndexScan, JobFilter, Listing
from jobs.intake import DEFAULT_RETRY_AFTER_S, Intake, Pause
from jobs.keys import INDEX_SUFFIX
from jobs.logs import bind
from jobs.model import F, State
from jobs.queue import JobQueue
from jobs.stats import QueueHistory, depth
from jobs.store import JobStore
from jobs.tenants import tenant_slug
from jobs.workers import WorkerRegistry
from longhaul.admin.v1 import admin_pb2 as apb
from longhaul.admin.v1 import admin_pb2_grpc as apb_grpc
from server import admin_validation, validation
from server.auth import Authenticator
from server.errors import grpc_errors

SERVICE_NAME = apb.DESCRIPTOR.services_by_name["AdminService"].full_name
# Who did what: one line per operator action, under its own logger so it can be routed apart.
audit = logging.getLogger("longhaul.audit")


class AdminServicer(apb_grpc.AdminServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        store: JobStore,
        queue: JobQueue,
        workers: WorkerRegistry,
        presigner: Presigner,
    ) -> None:
        self._authenticator = authenticator
        self._store = store
        self._queue = queue
        self._workers = workers
        self._presigner = presigner
        self._dead_letters = DeadLetters(store.redis, store.keys)
        self._intake = Intake(store.redis, store.keys)
        self._webhooks = WebhookDeliveries(store.redis, store.keys)
        self._history = QueueHistory(store, queue)

    def _operator(self, context: grpc.aio.ServicerContext) -> str:
        operator = self._authenticator.operator(context.invocation_metadata() or ())
        bind(operator=operator)
        return operator

    @grpc_errors
    async def GetQueueStats(self, request: apb.GetQueueStatsRequest, context: Any) -> apb.GetQueueStatsResponse:
        self._operator(context)
        now = await depth(self._store, self._queue)
        reply = apb.GetQueueStatsResponse(
            fresh=now.fresh,
            waiting=now.waiting,
            delayed=now.delayed,
            active=now.active,
            live=await self._store.live_count(),
            dead_letters=await self._dead_letters.count(),
            intake=_intake(await self._intake.paused()),
            webhooks_pending=await self._webhooks.pending(),
        )
        for report in await self._workers.reports():
            worker = reply.workers.add(name=report.name, running_job_ids=report.running)
            worker.last_seen_time.FromMilliseconds(report.seen_ms)
        return reply

    @grpc_errors
    async def ListDeadLetters(self, request: apb.ListDeadLettersRequest, context: Any) -> apb.ListDeadLettersResponse:
        self._operator(context)
        where = admin_validation.dead_letter_filter(request.filter)
        page_size, page_token = validation.page(request)
        reply = apb.ListDeadLettersResponse()
        reply.next_page_token = await self._page(self._dead_letters.scan(where, after=page_token), page_size, reply.dead_letters)
        return reply

    @grpc_errors
    async def GetQueueHistory(self, request: apb.GetQueueHistoryRequest, context: Any) -> apb.GetQueueHistoryResponse:
        self._operator(context)
        reply = apb.GetQueueHistoryResponse()
        for minute in await self._history.last():
            entry = reply.minutes.add(
                completed=minute.ended.get(State.COMPLETED, 0),
                failed=minute.ended.get(State.FAILED, 0),
                cancelled=minute.ended.get(State.CANCELLED, 0),
                failures=minute.failures,
            )
            entry.start_time.FromMilliseconds(minute.start_ms)
            if minute.queued is not None:
                entry.queued = minute.queued
            if minute.running is not None:
                entry.running = minute.running
        return reply

    @grpc_errors
    async def ListJobs(self, request: apb.ListJobsRequest, context: Any) -> apb.ListJobsResponse:
        self._operator(context)
        where = admin_validation.job_filter(request.filter)
        page_size, page_token = validation.page(request)
        keys = self._store.keys
        if where.tenant:
            indexes = [keys.index(tenant_slug(where.tenant))]
        else:
            tenants = cast(set[str], await self._store.redis.smembers(keys.tenants))  # decode_responses
            indexes = [prefix + INDEX_SUFFIX for prefix in sorted(tenants)]
        listing = Listing(IndexScan(self._store.redis, keys, indexes, where.since_ms, where.before_ms, page_token), where)
        reply = apb.ListJobsResponse()
        reply.next_page_token = await self._page(listing, page_size, reply.jobs)
        return reply

    async def _page(self, listing: Listing, page_size: int, entries: Any) -> str:
        """Adds up to `page_size` of the listing's jobs to `entries` (a repeated JobEntry); the token
        of the page after."""
        async for found in listing:
            entries.add(job=to_job(found.record, self._presigner), tenant=found.tenant, trace_id=found.trace_id)
            if len(entries) == page_size:
                return found.member
        return listing.resume_after

    @grpc_errors
    async def RetryDeadLetters(self, request: apb.RetryDeadLettersRequest, context: Any) -> apb.RetryDeadLettersResponse:
        operator = self._operator(context)
        job_ids, where = admin_validation.bulk(request)
        reply = apb.RetryDeadLettersResponse()

        async def retry(job_id: str, tenant: str) -> None:
            await self._store.retry(job_id, tenant)
            reply.retried_job_ids.append(job_id)

        reply.more = await self._each(job_ids, where, retry, reply.not_retried)
        audit.info(
            "operator %s retried %d dead letters (%s); %d not retried",
            operator, len(reply.retried_job_ids), _selection(job_ids, where), len(reply.not_retried),
        )
        return reply

    @grpc_errors
    async def DiscardDeadLetters(
        self, request: apb.DiscardDeadLettersRequest, context: Any
    ) -> apb.DiscardDeadLettersResponse:
        operator = self._operator(context)
        job_ids, where = admin_validation.bulk(request)
        reply = apb.DiscardDeadLettersResponse()

        async def discard(job_id: str, tenant: str) -> None:
            if not await self._dead_letters.discard(job_id):
                raise _NotDeadLetter()
            reply.discarded_job_ids.append(job_id)

        reply.more = await self._each(job_ids, where, discard, reply.not_discarded)
        audit.info(
            "operator %s discarded %d dead letters (%s); %d not discarded",
            operator, len(reply.discarded_job_ids), _selection(job_ids, where), len(reply.not_discarded),
        )
        return reply

    async def _each(
        self,
        job_ids: list[str],
        where: JobFilter,
        act: Callable[[str, str], Awaitable[None]],
        not_done: Any,
    ) -> bool:
        """Acts on the named jobs that are dead letters, or on those the filter matches (up to a bulk
        call's limit); whether more match. A job it could not act on goes to `not_done`, with why."""
        targets: list[tuple[str, str]] = []
        more = False
        if job_ids:
            for job_id in job_ids:
                state, tenant = await self._dead_letters.owner(job_id)
                if tenant is None:
                    not_done.add(job_id=job_id, reason=f"not a dead letter (the job is {state or 'not found'})")
                else:
                    targets.append((job_id, tenant))
        else:
            async for letter in self._dead_letters.scan(where):
                if len(targets) == admin_validation.MAX_BULK:
                    more = True
                    break
                targets.append((letter.record[F.ID], letter.tenant))
        for job_id, tenant in targets:
            try:
                await act(job_id, tenant)
            except _NotDeadLetter:
                not_done.add(job_id=job_id, reason="not a dead letter any more")
            except JobsError as error:
                not_done.add(job_id=job_id, reason=str(error))
        return more

    @grpc_errors
    async def PauseIntake(self, request: apb.PauseIntakeRequest, context: Any) -> apb.PauseIntakeResponse:
        operator = self._operator(context)
        reason, retry_after_s = admin_validation.pause(request, DEFAULT_RETRY_AFTER_S)
        pause, paused_now = await self._intake.pause(operator, reason, retry_after_s)
        if paused_now:
            audit.warning("operator %s paused intake: %s", operator, reason or "no reason given")
        else:
            audit.info("operator %s asked to pause intake, paused already by %s", operator, pause.by)
        return apb.PauseIntakeResponse(intake=_intake(pause))

    @grpc_errors
    async def ResumeIntake(self, request: apb.ResumeIntakeRequest, context: Any) -> apb.ResumeIntakeResponse:
        operator = self._operator(context)
        await self._intake.resume()
        audit.warning("operator %s resumed intake", operator)
        return apb.ResumeIntakeResponse(intake=_intake(None))


class _NotDeadLetter(Exception):
    pass


def _intake(pause: Pause | None) -> apb.Intake:
    if pause is None:
        return apb.Intake(paused=False)
    intake = apb.Intake(paused=True, paused_by=pause.by, reason=pause.reason)
    intake.pause_time.FromMilliseconds(pause.since_ms)
    intake.retry_after.FromSeconds(pause.retry_after_s)
    return intake


def _selection(job_ids: list[str], where: JobFilter) -> str:
    """What a bulk call was asked to act on, for the audit line."""
    if job_ids:
        return "jobs " + ", ".join(job_ids[:10]) + (f" and {len(job_ids) - 10} more" if len(job_ids) > 10 else "")
    if where.empty:
        return "all"
    return "filter " + ", ".join(f"{name}={value}" for name, value in vars(where).items() if value)
