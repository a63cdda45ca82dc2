"""Reading a job index newest first, with filters, in bounded work.

Our indexes are sorted sets of members "{ms:013d}:{id}" at score 0, so lex order is time order (each
tenant's jobs, the dead letters). Several are read as one, merged by member: every tenant's jobs for an
operator come from the tenants' own indexes (an index of all jobs would cost every job about 150 bytes
more). A filter that matches few jobs must not turn a call into a walk over the whole index: a scan
looks at no more than its budget of members and then says where to go on, which becomes the page token.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from jobs.keys import Keys
from jobs.model import UNREAD_FIELDS, F
from jobs.store import Fields
from jobs.tracing import trace_id_of

# Members read per round trip.
_CHUNK = 200


def job_id_of(member: str) -> str:
    return member.split(":", 1)[1]


class IndexScan:
    """The records the members of `indexes` name, newest first: from after the member `after`, within
    [since_ms, before_ms) (0: unbounded), skipping members whose record is gone. Members `drop` says
    are stale are removed from their index as they are met. When `budget` members have been looked at
    before the indexes end, the scan stops and `resume_after` names where the next one goes on."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        indexes: list[str],
        since_ms: int = 0,
        before_ms: int = 0,
        after: str = "",
        budget: int = 10_000,
        drop: Callable[[str, Fields], bool] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._indexes = indexes
        self._upper = f"({after}" if after else (f"({before_ms:013d}" if before_ms else "+")
        self._lower = f"[{since_ms:013d}" if since_ms else "-"
        self._budget = budget
        self._drop = drop
        self.resume_after = ""

    async def __aiter__(self) -> AsyncIterator[tuple[str, Fields]]:
        upper, budget = self._upper, self._budget
        while True:
            if budget <= 0:
                self.resume_after = upper[1:]
                return
            chunk = min(_CHUNK, budget)
            async with self._redis.pipeline(transaction=False) as pipe:
                for index in self._indexes:
                    pipe.zrevrangebylex(index, upper, self._lower, start=0, num=chunk)
                found = cast(list[list[str]], await pipe.execute())  # decode_responses (connections.py)
            # The newest `chunk` of them all, each with its index; the rest is read again in a later round.
            tagged = [[(member, index) for member in members] for index, members in zip(self._indexes, found, strict=True)]
            merged = list(itertools.islice(heapq.merge(*tagged, reverse=True), chunk))
            members = [member for member, _ in merged]
            if not members:
                return
            budget -= len(members)
            async with self._redis.pipeline(transaction=False) as pipe:
                for member, _ in merged:
                    pipe.hgetall(self._keys.job(job_id_of(member)))
                records = cast(list[Fields], await pipe.execute())
            for (member, index), record in zip(merged, records, strict=True):
                if self._drop is not None and self._drop(member, record):
                    await self._redis.zrem(index, member)
                elif record:
                    yield member, record
            upper = f"({members[-1]}"


@dataclass(frozen=True)
class JobFilter:
    """Which jobs, for operators; unset fields match every job. (Dead letters are all FAILED.)"""

    tenant: str = ""
    state: str = ""  # jobs.model.State's value
    error_code: str = ""  # jobs.model.ErrorCode's value
    since_ms: int = 0  # at or after; 0: any
    before_ms: int = 0  # before; 0: any

    @property
    def empty(self) -> bool:
        return self == JobFilter()

    def matches(self, record: Fields) -> bool:
        if self.tenant and record.get(F.TENANT) != self.tenant:
            return False
        if self.state and record.get(F.STATE) != self.state:
            return False
        return not self.error_code or json.loads(record.get(F.ERROR) or "{}").get("code") == self.error_code


@dataclass(frozen=True)
class Found:
    """A job an operator listing found."""

    record: Fields  # as JobStore.get gives it (file ids included)
    tenant: str
    trace_id: str  # of the call that created the job, when tracing was on
    member: str  # its place in the index: the next page starts after it


class Listing:
    """The jobs of an index that match a filter, newest first (IndexScan's paging and budget)."""

    def __init__(self, scan: IndexScan, where: JobFilter) -> None:
        self._scan = scan
        self._where = where

    @property
    def resume_after(self) -> str:
        return self._scan.resume_after

    async def __aiter__(self) -> AsyncIterator[Found]:
        async for member, record in self._scan:
            if self._where.matches(record):
                public = {name: value for name, value in record.items() if name not in UNREAD_FIELDS}
                yield Found(public, record[F.TENANT], trace_id_of(record.get(F.TRACEPARENT, "")), member)
