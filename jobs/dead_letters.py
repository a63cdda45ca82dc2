"""Dead letters: jobs that failed for good, across tenants, for operators to look at, retry or discard.

A job that ends FAILED is one (transient errors are retried before a job fails): `transition.lua` adds
it to `{p}:dead`, newest failure last by lex ("{failed_ms:013d}:{id}"), and a retry or a forget takes it
out. A dead letter whose job has expired is dropped as soon as a listing meets it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from jobs.keys import Keys, index_member
from jobs.model import PRIVATE_FIELDS, F, State
from jobs.store import Fields
from jobs.tracing import trace_id_of

# Dead letters read per round trip while scanning.
_CHUNK = 200
_HIDDEN = PRIVATE_FIELDS - {F.FILE_IDS}


@dataclass(frozen=True)
class DeadLetterFilter:
    tenant: str = ""
    error_code: str = ""  # jobs.model.ErrorCode's value
    failed_after_ms: int = 0  # at or after; 0: any
    failed_before_ms: int = 0  # before; 0: any

    @property
    def empty(self) -> bool:
        return self == DeadLetterFilter()

    def matches(self, record: Fields) -> bool:
        if self.tenant and record.get(F.TENANT) != self.tenant:
            return False
        return not self.error_code or json.loads(record.get(F.ERROR) or "{}").get("code") == self.error_code


@dataclass(frozen=True)
class DeadLetter:
    record: Fields  # the job's record, file ids included, as JobStore.get gives it
    tenant: str
    trace_id: str  # of the call that created the job, when tracing was on
    member: str  # its place in the list: the next page starts after it


class Scan:
    """The dead letters that match, newest failure first, from after the member `after`. It looks at
    no more than `budget` of them; when that runs out first, `resume_after` says where to go on."""

    def __init__(self, redis: Redis, keys: Keys, where: DeadLetterFilter, after: str, budget: int) -> None:
        self._redis = redis
        self._keys = keys
        self._where = where
        self._after = after
        self._budget = budget
        self.resume_after = ""

    async def __aiter__(self) -> AsyncIterator[DeadLetter]:
        where = self._where
        upper = f"({self._after}" if self._after else (f"({where.failed_before_ms:013d}" if where.failed_before_ms else "+")
        lower = f"[{where.failed_after_ms:013d}" if where.failed_after_ms else "-"
        budget = self._budget
        while True:
            if budget <= 0:
                self.resume_after = upper[1:]
                return
            found = await self._redis.zrevrangebylex(self._keys.dead, upper, lower, start=0, num=min(_CHUNK, budget))
            members = cast(list[str], found)
            if not members:
                return
            budget -= len(members)
            async with self._redis.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(self._keys.job(_job_id(member)))
                records = await pipe.execute()
            # Expired since it failed (a retry or a forget takes its member out itself).
            gone = [m for m, r in zip(members, records, strict=True) if not _failed_as(m, r)]
            if gone:
                await self._redis.zrem(self._keys.dead, *gone)
            for member, record in zip(members, records, strict=True):
                if member not in gone and where.matches(record):
                    trace_id = trace_id_of(record.get(F.TRACEPARENT, ""))
                    yield DeadLetter(_public(record), record[F.TENANT], trace_id, member)
            upper = f"({members[-1]}"


class DeadLetters:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def count(self) -> int:
        return int(await self._redis.zcard(self._keys.dead))

    def scan(self, where: DeadLetterFilter, after: str = "", budget: int = 10_000) -> Scan:
        return Scan(self._redis, self._keys, where, after, budget)

    async def discard(self, job_id: str) -> bool:
        """Takes one job off the list; False when it is not a dead letter."""
        record = cast(list[str | None], await self._redis.hmget(self._keys.job(job_id), F.STATE, F.FINISHED_MS))
        state, failed_ms = record
        if state != State.FAILED or not failed_ms:
            return False
        return bool(await self._redis.zrem(self._keys.dead, index_member(int(failed_ms), job_id)))

    async def is_dead_letter(self, job_id: str) -> bool:
        failed_ms = await self._redis.hget(self._keys.job(job_id), F.FINISHED_MS)
        if failed_ms is None:
            return False
        return await self._redis.zscore(self._keys.dead, index_member(int(failed_ms), job_id)) is not None


def _job_id(member: str) -> str:
    return member.split(":", 1)[1]


def _failed_as(member: str, record: Fields) -> bool:
    """Whether the record is the failure the member was added for."""
    return record.get(F.STATE) == State.FAILED and member == index_member(int(record.get(F.FINISHED_MS, 0)), _job_id(member))


def _public(record: Fields) -> Fields:
    """The record as JobStore.get gives it (file ids included)."""
    return {name: value for name, value in record.items() if name not in _HIDDEN}
