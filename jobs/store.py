"""The job store: every read and write of job state in Redis goes through here.

Each write is one Lua script, so the record, the event history and the live notification never
disagree, and each costs one round trip.
"""

from __future__ import annotations

import builtins
import hashlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from redis.asyncio import Redis

from jobs import metrics, tracing
from jobs.errors import (
    HistoryAhead,
    IdempotencyConflict,
    IntakePaused,
    JobAlreadyFinished,
    JobNotFound,
    JobNotRetryable,
    QuotaExceeded,
    RunSuperseded,
)
from jobs.intake import Pause
from jobs.keys import MINUTE_MS, Keys, index_member
from jobs.model import TERMINAL_STATES, UNREAD_FIELDS, ErrorCode, EventType, F, Phase, Priority, State, WebhookState
from jobs.multiplex import MultiplexedRedis
from jobs.replication import Replication
from jobs.scripts import lua_script
from jobs.settings import Settings
from jobs.storage import job_artifact_key
from jobs.tenants import tenant_slug

Fields = dict[str, str]
# Extra history entries read to fill a gap, for events written between reading the latest seq and
# the history itself.
_HISTORY_SLACK = 32


def _without(names: Iterable[str], record: Fields) -> Fields:
    for name in names:
        record.pop(name, None)
    return record


def now_ms() -> int:
    return int(time.time() * 1000)


def fingerprint(file_ids: Iterable[int]) -> str:
    """Identifies a request's content for idempotency: the same ids in the same order."""
    return hashlib.sha256(",".join(map(str, file_ids)).encode()).hexdigest()[:32]


class JobStore:
    def __init__(self, redis: Redis, settings: Settings, commands: MultiplexedRedis | Redis | None = None) -> None:
        """`commands` carries the per-call commands (reads of one job, the scripts); by default
        `redis`, which also serves the rest (listing, histories)."""
        self.redis = redis
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self._commands = commands or redis
        # Told the id of each job this process changed, once the change is in Redis (records.py).
        self.on_write: Callable[[str], None] = lambda job_id: None
        self._create = self._commands.register_script(lua_script("create"))
        self._transition = self._commands.register_script(lua_script("transition"))
        self._forget = self._commands.register_script(lua_script("forget"))
        self._retry = self._commands.register_script(lua_script("retry"))
        self._replication = Replication(self._commands, settings, self.keys.replication_probe)
        # Call ids: this store's own prefix and a counter (unique, and cheaper than a uuid per call).
        self._caller = uuid.uuid4().hex[:12]
        self._calls = itertools.count()

    # -- creating ------------------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        file_ids: list[int],
        request_id: str = "",
        priority: Priority = Priority.NORMAL,
        callback_url: str = "",
    ) -> tuple[Fields, bool]:
        """Creates a QUEUED job of `tenant`, its ending to be announced to `callback_url` if given, or
        returns the one the tenant's `request_id` already made (created=False). Raises QuotaExceeded
        when the tenant has its limit of active jobs."""
        job_id = str(uuid.uuid4())
        slug = tenant_slug(tenant)
        created = now_ms()
        retention_s = self.settings.job_ttl_s + self.settings.expired_retention_s
        fields: Fields = {
            F.ID: job_id,
            F.STATE: State.QUEUED,
            F.PHASE: Phase.QUEUED,
            F.PERCENT: "0",
            F.FILES_DONE: "0",
            F.FILES_TOTAL: str(len(file_ids)),
            F.BYTES_DONE: "0",
            F.BYTES_TOTAL: "0",
            F.MESSAGE: "waiting for a worker",
            F.ATTEMPTS: "0",
            F.CREATED_MS: str(created),
            F.UPDATED_MS: str(created),
            F.FILE_IDS: json.dumps(file_ids),
            F.PRIORITY: priority,
            F.REQUEST_ID: request_id,
            F.TENANT: tenant,
            F.TENANT_KEY: self.keys.tenant(slug),
            F.SEQ: "1",
        }
        if callback_url:
            fields |= {F.HOOK_URL: callback_url, F.HOOK_STATE: WebhookState.WAITING}
        if tracing.enabled() and (traceparent := tracing.current_traceparent()):
            fields[F.TRACEPARENT] = traceparent
        k = self.keys
        keys = [k.job(job_id), k.index(slug), k.active(slug), k.live, k.fresh, k.intake, k.tenants]
        if request_id:
            keys.append(k.idempotency(slug, request_id))
        args: list[Any] = [
            job_id,
            fingerprint(file_ids) if request_id else "",
            retention_s,
            index_member(created, job_id),
            index_member(max(created - retention_s * 1000, 0), ""),
            created,
            json.dumps(fields, separators=(",", ":")),
            self.settings.limits_for(tenant)[0],
            k.job(""),
        ]
        outcome = await self._replication.write(f"job {job_id}", self._create, keys, args)
        if outcome[0] == "created":
            metrics.JOBS_CREATED.inc()
            metrics.EVENTS_BY_TYPE[EventType.STATE_CHANGED].inc()
            return fields, True
        if outcome[0] == "conflict":
            raise IdempotencyConflict(request_id, outcome[1])
        if outcome[0] == "paused":
            raise _refused_while_paused(outcome[1])
        if outcome[0] == "quota":
            metrics.REFUSED.labels("active_jobs").inc()
            raise QuotaExceeded(tenant, int(outcome[1]))
        await self._replication.confirm(f"job {outcome[1]}")
        return await self.get(outcome[1], tenant), False

    async def forget(self, job_id: str, tenant: str | None = None) -> None:
        """Removes every trace of one of `tenant`'s jobs (None: any job), whatever its state; its artifact
        is deleted soon after. Also undoes a create whose enqueue failed, so it leaves nothing behind."""
        k = self.keys
        keys = [k.job(job_id), k.events(job_id), k.tombstone(job_id), k.live, k.sweep, k.call(self.new_call()), k.dead]
        forgotten = await self._forget(keys=keys, args=[job_id, now_ms(), tenant or ""])
        self.on_write(job_id)
        if not forgotten:
            raise JobNotFound(job_id)

    # -- reading -------------------------------------------------------------------------------

    async def get(self, job_id: str, tenant: str | None, with_file_ids: bool = True) -> Fields:
        """The job record; an expired job reads as a stub in state EXPIRED. Another tenant's job is
        not found (tenant None: the caller is the service itself, e.g. a worker)."""
        # The tombstone only matters without the record. (Replies are str: decode_responses, connections.py.)
        record = cast(Fields, await self._commands.hgetall(self.keys.job(job_id)))
        if record:
            if tenant is not None and record.get(F.TENANT) != tenant:
                raise JobNotFound(job_id)
            return _without(UNREAD_FIELDS if with_file_ids else UNREAD_FIELDS | {F.FILE_IDS}, record)
        owner = await self._commands.get(self.keys.tombstone(job_id))
        if owner is not None and (tenant is None or owner == tenant):
            return expired_stub(job_id)
        raise JobNotFound(job_id)

    async def live_count(self) -> int:
        """Jobs queued or running, across tenants."""
        return int(await self.redis.zcard(self.keys.live))

    async def fresh_count(self) -> int:
        """Jobs created and not yet taken by a relay into the queue."""
        return int(await self.redis.llen(self.keys.fresh))

    def artifact_key(self, record: Fields) -> str:
        """Where the job's archive goes in the bucket."""
        return job_artifact_key(self.settings.redis_prefix, record)

    async def latest_seq(self, job_id: str) -> int:
        return int(await self._commands.hget(self.keys.job(job_id), F.SEQ) or 0)

    async def events_after(self, job_id: str, after_seq: int) -> list[Fields] | None:
        """The events after `after_seq`, oldest first, or None when part of that history is gone."""
        latest = await self.latest_seq(job_id)
        if after_seq > latest and latest:
            raise HistoryAhead(after_seq, latest)
        if after_seq >= latest:
            return []
        # The history holds consecutive seqs up to `latest`, or a few more if events came meanwhile.
        entries = await self.redis.lrange(self.keys.events(job_id), -(latest - after_seq + _HISTORY_SLACK), -1)
        events = [event for entry in entries if int((event := json.loads(entry))[F.SEQ]) > after_seq]
        if not events or int(events[0][F.SEQ]) != after_seq + 1:
            return None
        return events

    async def list(self, tenant: str, page_size: int, page_token: str = "") -> tuple[list[Fields], str]:
        """The tenant's jobs, newest first. The page token is the index member of the last job returned."""
        index = self.keys.index(tenant_slug(tenant))
        upper = f"({page_token}" if page_token else "+"
        members = cast(builtins.list[str], await self.redis.zrevrangebylex(index, upper, "-", start=0, num=page_size))
        if not members:
            return [], ""
        job_ids = [m.split(":", 1)[1] for m in members]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
                pipe.exists(self.keys.tombstone(job_id))
            replies = await pipe.execute()
        jobs: list[Fields] = []
        forgotten: list[str] = []
        for member, job_id, record, gone in zip(members, job_ids, replies[::2], replies[1::2], strict=True):
            if record:
                jobs.append(_without(UNREAD_FIELDS | {F.FILE_IDS}, record))
            elif gone:
                jobs.append(expired_stub(job_id))
            else:
                forgotten.append(member)
        if forgotten:
            await self.redis.zrem(index, *forgotten)
        next_token = members[-1] if len(members) == page_size else ""
        return jobs, next_token

    # -- changing ------------------------------------------------------------------------------

    async def claim(self, job_id: str, worker: str, token: str, retries: int = 0) -> Fields | None:
        """A worker takes the job's run that follows `retries` retries: RUNNING, a new attempt fenced
        by `token`; returns the record with its file ids, or None if that run is over."""
        outcome = await self._apply(
            job_id,
            {
                F.STATE: State.RUNNING,
                F.PHASE: Phase.FETCHING,
                F.WORKER: worker,
                F.MESSAGE: "started",
                F.NEXT_ATTEMPT_MS: "",
            },
            EventType.STATE_CHANGED,
            claim_token=token,
            expect_retries=str(retries),
        )
        if outcome[0] != "ok":
            return None
        return json.loads(outcome[2]) | {F.FILE_IDS: outcome[3], F.TRACEPARENT: outcome[4], F.HOOK_URL: outcome[5]}

    async def report(
        self,
        job_id: str,
        token: str,
        fields: Mapping[str, Any],
        event: EventType = EventType.PROGRESS,
        call: str = "",
    ) -> int:
        """Records progress (or a final state) of the run holding `token`; returns the event's seq.
        A caller that tries again after an error passes the same `call` (new_call()) each time, so
        that a try whose reply was lost is not applied twice.

        Raises RunSuperseded when the run no longer owns the job, which tells it to stop.
        """
        outcome = await self._apply(job_id, fields, event, expect_token=token, call=call)
        if outcome[0] == "ok":
            return int(outcome[1])
        reason = {"missing": "the job is gone", "fenced": "another worker took it over"}.get(
            outcome[0], f"the job is {outcome[1] if len(outcome) > 1 else 'finished'}"
        )
        raise RunSuperseded(job_id, reason)

    async def hand_back(self, job_id: str, token: str, message: str) -> bool:
        """Puts a RUNNING job whose run was lost back to QUEUED, fencing that run (its token is cleared,
        so a run that is somehow still alive cannot write again). False when the job moved on since
        `token` was read: taken by another run, or over."""
        fields = {
            F.STATE: State.QUEUED,
            F.PHASE: Phase.QUEUED,
            F.MESSAGE: message,
            F.TOKEN: "",
            F.NEXT_ATTEMPT_MS: now_ms(),
        }
        outcome = await self._apply(job_id, fields, EventType.STATE_CHANGED, expect_token=token)
        return outcome[0] == "ok"

    async def cancel(self, job_id: str, tenant: str) -> Fields:
        """Cancels a live job of `tenant` (idempotent for a cancelled one) and tells the workers."""
        outcome = await self._apply(
            job_id,
            finish_fields(State.CANCELLED, self.settings, "cancelled on request"),
            EventType.STATE_CHANGED,
            expect_tenant=tenant,
            durable=True,
        )
        if outcome[0] == "ok":
            await self._commands.publish(self.keys.cancel_channel, job_id)
            # The job as a reader sees it: the event leaves out its webhook, now due.
            return await self.get(job_id, tenant, with_file_ids=False)
        if outcome[0] == "missing":
            return await self.get(job_id, tenant, with_file_ids=False)  # raises NotFound, or reads EXPIRED
        if outcome[1] == State.CANCELLED:
            await self._replication.confirm(f"the cancel of job {job_id}")
            return await self.get(job_id, tenant, with_file_ids=False)
        raise JobAlreadyFinished(job_id, outcome[1])

    async def retry(self, job_id: str, tenant: str, request_id: str = "") -> Fields:
        """Runs a FAILED or CANCELLED job of `tenant` again under the same id (lua/retry.lua).
        A repeat of the same retry (same `request_id`) answers the job as it is now. Raises
        JobNotRetryable in any other state, QuotaExceeded at the tenant's active-jobs limit."""
        k = self.keys
        keys = [k.job(job_id), k.events(job_id), k.tombstone(job_id), k.sweep, k.live, k.fresh, k.intake, k.dead, k.webhooks]
        args = [
            now_ms(),
            self.settings.event_history_len,
            k.events_channel,
            job_id,
            tenant,
            self.new_call(),
            request_id,
            self.settings.limits_for(tenant)[0],
            k.job(""),
            "retried on request; waiting for a worker",
        ]
        outcome = await self._replication.write(f"the retry of job {job_id}", self._retry, keys, args)
        self.on_write(job_id)
        if outcome[0] == "ok":
            metrics.JOBS_RETRIED.inc()
            metrics.EVENTS_BY_TYPE[EventType.STATE_CHANGED].inc()
            return json.loads(outcome[2]) | {F.FILE_IDS: outcome[3]} | json.loads(outcome[4])
        if outcome[0] == "quota":
            metrics.REFUSED.labels("active_jobs").inc()
            raise QuotaExceeded(tenant, int(outcome[1]))
        if outcome[0] == "state":
            raise JobNotRetryable(job_id, outcome[1])
        if outcome[0] == "paused":
            raise _refused_while_paused(outcome[1])
        if outcome[0] == "repeated":
            await self._replication.confirm(f"the retry of job {job_id}")
            return await self.get(job_id, tenant, with_file_ids=False)
        # Missing: not found, or only its tombstone is left.
        raise JobNotRetryable(job_id, (await self.get(job_id, tenant))[F.STATE])

    async def _apply(
        self,
        job_id: str,
        fields: Mapping[str, Any],
        event: EventType,
        expect_token: str = "",
        claim_token: str = "",
        expect_tenant: str = "",
        call: str = "",
        durable: bool = False,
        expect_retries: str = "",
    ) -> builtins.list[Any]:
        """Runs the transition script; `durable`: answers once the change is as replicated as the
        settings ask (replication.py), for changes a user was told of."""
        s = self.settings
        now = now_ms()
        args: builtins.list[Any] = [
            now,
            s.event_history_len,
            self.keys.events_channel,
            event,
            expect_token,
            claim_token,
            s.job_ttl_s,
            s.job_ttl_s + s.expired_retention_s,
            job_id,
            expect_tenant,
            call or self.new_call(),
            min(s.job_ttl_s, s.event_history_ttl_s),
            expect_retries,
        ]
        for name, value in fields.items():
            args += [name, value]
        k = self.keys
        keys = [k.job(job_id), k.events(job_id), k.tombstone(job_id), k.sweep, k.live, k.dead]
        keys += [k.stats(now // MINUTE_MS), k.webhooks]
        if durable:
            outcome = await self._replication.write(f"the change of job {job_id}", self._transition, keys, args)
        else:
            outcome = await self._transition(keys=keys, args=args)
        self.on_write(job_id)
        if outcome[0] == "ok":
            _count(event, fields.get(F.STATE), claim_token != "", outcome[2])
        return outcome

    def new_call(self) -> str:
        """An id for one call of a script that changes a job, by which Redis knows a repeat of it."""
        return f"{self._caller}:{next(self._calls)}"


def _count(event: EventType, state: str | None, claimed: bool, payload: str) -> None:
    """The metrics of one applied change. (A repeated call, whose first reply was lost, counts
    again: rare, and only while Redis is failing.)"""
    metrics.EVENTS_BY_TYPE[event].inc()
    if not claimed and state not in TERMINAL_STATES:
        return  # progress: the common case, counted without reading the record
    record = json.loads(payload)
    now_s = int(record[F.UPDATED_MS]) / 1000
    if claimed:
        metrics.ATTEMPTS.inc()
        if record[F.ATTEMPTS] == "1" and F.RETRIES not in record:  # a retry's wait is not the queue's
            metrics.JOB_QUEUE_WAIT.observe(max(now_s - int(record[F.CREATED_MS]) / 1000, 0))
        return
    metrics.JOBS_FINISHED.labels(state).inc()
    metrics.JOB_DURATION.labels(state).observe(max(now_s - int(record[F.CREATED_MS]) / 1000, 0))
    if state == State.FAILED:
        metrics.JOBS_FAILED.labels(json.loads(record.get(F.ERROR) or "{}").get("code", ErrorCode.INTERNAL)).inc()


def _refused_while_paused(pause: str) -> IntakePaused:
    metrics.REFUSED.labels("intake_paused").inc()
    return IntakePaused(Pause.from_json(pause).retry_after_s)


def finish_fields(state: State, settings: Settings, message: str) -> dict[str, Any]:
    """The fields every terminal transition writes."""
    finished = now_ms()
    return {
        F.STATE: state,
        F.PHASE: Phase.DONE,
        F.MESSAGE: message,
        F.FINISHED_MS: finished,
        F.EXPIRE_MS: finished + settings.job_ttl_s * 1000,
        F.ETA_MS: 0,
    }


def expired_stub(job_id: str) -> Fields:
    return {F.ID: job_id, F.STATE: State.EXPIRED, F.PHASE: Phase.DONE, F.MESSAGE: "the job's retention has passed"}
