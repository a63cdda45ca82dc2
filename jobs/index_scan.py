"""Reading a job index newest first, with filters, in bounded work.

Our indexes are sorted sets of members "{ms:013d}:{id}" at score 0, so lex order is time order (the
tenants' listings, every job for operators, the dead letters). A filter that matches few jobs must not
turn a call into a walk over the whole index: a scan looks at no more than its budget of members and
then says where to go on, which becomes the page token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from jobs.keys import Keys
from jobs.model import PRIVATE_FIELDS, F
from jobs.store import Fields
from jobs.tracing import trace_id_of

# Members read per round trip.
_CHUNK = 200
_HIDDEN = PRIVATE_FIELDS - {F.FILE_IDS}


def job_id_of(member: str) -> str:
    return member.split(":", 1)[1]


class IndexScan:
    """The records the members of `index` name, newest first: from after the member `after`, within
    [since_ms, before_ms) (0: unbounded), skipping members whose record is gone. Members `drop` says
    are stale are removed from the index as they are met. When `budget` members have been looked at
    before the index ends, the scan stops and `resume_after` names where the next one goes on."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        index: str,
        since_ms: int = 0,
        before_ms: int = 0,
        after: str = "",
        budget: int = 10_000,
        drop: Callable[[str, Fields], bool] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._index = index
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
            found = await self._redis.zrevrangebylex(self._index, upper, self._lower, start=0, num=min(_CHUNK, budget))
            members = cast(list[str], found)  # decode_responses (connections.py)
            if not members:
                return
            budget -= len(members)
            async with self._redis.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(self._keys.job(job_id_of(member)))
                records = cast(list[Fields], await pipe.execute())
            if self._drop is not None and (stale := [m for m, r in zip(members, records, strict=True) if self._drop(m, r)]):
                await self._redis.zrem(self._index, *stale)
            for member, record in zip(members, records, strict=True):
                if record and (self._drop is None or not self._drop(member, record)):
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
                public = {name: value for name, value in record.items() if name not in _HIDDEN}
                yield Found(public, record[F.TENANT], trace_id_of(record.get(F.TRACEPARENT, "")), member)
