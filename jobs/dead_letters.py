"""Dead letters: jobs that failed for good, across tenants, for operators to look at, retry or discard.

A job that ends FAILED is one (transient errors are retried before a job fails): `transition.lua` adds
it to `{p}:dead`, newest failure last by lex ("{failed_ms:013d}:{id}"), and a retry or a forget takes it
out. A dead letter whose job has expired is dropped as soon as a listing meets it.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from jobs.index_scan import IndexScan, JobFilter, Listing, job_id_of
from jobs.keys import Keys, index_member
from jobs.model import F, State
from jobs.store import Fields


class DeadLetters:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def count(self) -> int:
        return int(await self._redis.zcard(self._keys.dead))

    def scan(self, where: JobFilter, after: str = "", budget: int = 10_000) -> Listing:
        """The dead letters that match, newest failure first; the filter's times are failure times."""
        index = IndexScan(
            self._redis, self._keys, [self._keys.dead], where.since_ms, where.before_ms, after, budget, _not_failed_as
        )
        return Listing(index, where)

    async def discard(self, job_id: str) -> bool:
        """Takes one job off the list; False when it is not a dead letter."""
        member = await self._member(job_id)
        return member is not None and bool(await self._redis.zrem(self._keys.dead, member))

    async def owner(self, job_id: str) -> tuple[str, str | None]:
        """(the job's state, "" when it is gone; its tenant when it is a dead letter, else None)."""
        fields = await self._redis.hmget(self._keys.job(job_id), F.STATE, F.TENANT, F.FINISHED_MS)
        state, tenant, failed_ms = cast(list[str | None], fields)  # decode_responses (connections.py)
        member = _member(job_id, state, failed_ms)
        if member is None or await self._redis.zscore(self._keys.dead, member) is None:
            return state or "", None
        return state or "", tenant or ""

    async def _member(self, job_id: str) -> str | None:
        state, failed_ms = cast(list[str | None], await self._redis.hmget(self._keys.job(job_id), F.STATE, F.FINISHED_MS))
        return _member(job_id, state, failed_ms)


def _member(job_id: str, state: str | None, failed_ms: str | None) -> str | None:
    """The job's member in the list, if the job is FAILED."""
    return index_member(int(failed_ms), job_id) if state == State.FAILED and failed_ms else None


def _not_failed_as(member: str, record: Fields) -> bool:
    """Whether the member is stale: its job expired since it failed (a retry or a forget takes the
    member out itself, and a job that failed again has a member of its own)."""
    failed_ms = record.get(F.FINISHED_MS)
    return record.get(F.STATE) != State.FAILED or not failed_ms or member != index_member(int(failed_ms), job_id_of(member))
