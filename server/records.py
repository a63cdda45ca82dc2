"""Job records this server has read, kept in memory and coherent through Redis's client-side caching.

Clients that poll (`GetStatus` every few seconds, as the original design does; dashboards; retries) read the same
records again and again, mostly unchanged: a queued job waits, a finished one stays as it is. Reading
one from Redis costs a round trip and about a third of the call's CPU; from memory it costs a dict
lookup (BENCHMARKS.md has the figures).

Coherence is Redis's job: the reads go over one connection with `CLIENT TRACKING ON REDIRECT <id>`,
so Redis remembers which job keys this server read and, when one changes, is deleted or expires,
sends the key name to a second connection of ours subscribed to `__redis__:invalidate`. We drop the
entry when that arrives. Three more rules close the gaps:
- a read in flight when its key is invalidated is not cached (`_pending`), so a reply that raced an
  invalidation cannot plant a stale record;
- the watch hub drops a job's entry when it relays one of the job's events, and this server's own
  writes drop it when they return, so a client that saw a change (in a watch, or as its own call's
  answer) never reads the state before it here;
- when the invalidation connection is lost, invalidations may have been lost with it: the cache is
  emptied and stays off until that connection is back and the reads' connection points at it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError, ResponseError

from jobs.connections import multiplexed_redis
from jobs.convert import Presigner, to_job
from jobs.errors import JobNotFound
from jobs.model import UNREAD_FIELDS, F
from jobs.multiplex import Address, Connection, pack
from jobs.settings import Settings
from jobs.store import Fields, JobStore
from longhaul.download.v1 import download_pb2 as pb

log = logging.getLogger(__name__)

INVALIDATIONS = "__redis__:invalidate"


class StoredRecords:
    """The reads GetStatus and GetOperation make, straight from Redis (the record cache turned off)."""

    def __init__(self, store: JobStore, presigner: Presigner) -> None:
        self._store = store
        self._presigner = presigner

    async def get(self, job_id: str, tenant: str) -> Fields:
        return await self._store.get(job_id, tenant)

    async def job(self, job_id: str, tenant: str) -> pb.Job:
        return to_job(await self._store.get(job_id, tenant), self._presigner)


@dataclass(slots=True)
class _Entry:
    record: Fields
    job: pb.Job | None = None  # built from the record at its first GetStatus


class RecordCache:
    """The same reads as StoredRecords, from memory when this server has the record."""

    def __init__(self, store: JobStore, presigner: Presigner, settings: Settings, capacity: int) -> None:
        self._store = store
        self._presigner = presigner
        self._capacity = capacity
        self._records: collections.OrderedDict[str, _Entry] = collections.OrderedDict()  # Redis key -> entry
        self._pending: dict[str, object] = {}  # Redis key -> token of the read that may cache it
        # Our invalidation connection's client id and the Redis it is on, while up.
        self._redirect: tuple[int, Address] | None = None
        self._listener_connection: Connection | None = None
        self._reads = multiplexed_redis(settings, setup=self._tracking)
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self._redirect is not None

    async def start(self, timeout_s: float = 5) -> None:
        self._listener = asyncio.create_task(self._listen_forever())
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
            await self._reads.execute_command("PING")  # opens the reads connection, tracking on
        except TimeoutError:
            log.warning("record cache off until Redis's invalidations can be received")
        except ResponseError as error:
            # A Redis without client-side caching (before 6.0), or one that forbids CLIENT commands.
            log.warning("record cache off: Redis refused client tracking (%s)", error)
            await self.close()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._reads.aclose()

    async def get(self, job_id: str, tenant: str) -> Fields:
        """What `JobStore.get(job_id, tenant)` answers, from memory when this server has it."""
        return (await self._entry(job_id, tenant)).record

    async def job(self, job_id: str, tenant: str) -> pb.Job:
        """The record as the contract's Job, built once per version of the record, and again when
        its download URL has used half its life (callers copy the message, as protobuf does when it
        is put into a reply, and never change it)."""
        entry = await self._entry(job_id, tenant)
        job = entry.job
        if job is None or (
            job.HasField("result")
            and not self._presigner.reusable(job.result.url_expire_time.ToMilliseconds(), int(entry.record.get(F.EXPIRE_MS) or 0))
        ):
            entry.job = job = to_job(entry.record, self._presigner)
        return job

    async def _entry(self, job_id: str, tenant: str) -> _Entry:
        key = self._store.keys.job(job_id)
        entry = self._records.get(key)
        if entry is None:
            record = await self._read(key) if self.enabled else {}
            if not record:  # not cached, or gone: NOT_FOUND or EXPIRED from the tombstone
                return _Entry(await self._store.get(job_id, tenant))
            entry = self._records.get(key) or _Entry(record)  # not kept if it raced a change
        if entry.record.get(F.TENANT) != tenant:
            raise JobNotFound(job_id)
        return entry

    def reconnect(self) -> None:
        """Drops the reads' connection (a failover); the invalidations' follows it (`_tracking`)."""
        self._reads.reconnect()

    def __contains__(self, job_id: str) -> bool:
        return self._store.keys.job(job_id) in self._records

    def drop(self, job_id: str) -> None:
        """The job changed (its event was seen, or this server wrote it)."""
        self._invalidate(self._store.keys.job(job_id))

    # -- reading -------------------------------------------------------------------------------

    async def _read(self, key: str) -> Fields:
        token = self._pending[key] = object()
        try:
            record = await self._reads.hgetall(key)
        except Exception:  # noqa: BLE001 - the plain path reports the failure if there is one
            self._pending.pop(key, None)
            return {}
        if self._pending.get(key) is token:
            del self._pending[key]
            if record:
                for name in UNREAD_FIELDS:  # the record as JobStore.get answers it
                    record.pop(name, None)
                if len(self._records) >= self._capacity:
                    self._records.popitem(last=False)  # the oldest read
                self._records[key] = _Entry(record)
        return record

    # -- invalidations -------------------------------------------------------------------------

    def _tracking(self, address: Address) -> list[tuple[Any, ...]]:
        """Set-up of each new reads connection: its reads are tracked, invalidations go to ours."""
        if self._redirect is None:
            return []  # reads still work; none is cached (see get)
        redirect_id, listening_at = self._redirect
        if address != listening_at:
            # A failover moved the primary: the id belongs to another Redis, where it may name some
            # other client. The listener moves too; until then this connection is refused (and retried).
            if self._listener_connection is not None:
                self._listener_connection.abort(ConnectionError("the primary moved"))
            raise ConnectionError(f"Redis's invalidations still come from {listening_at}, not {address}")
        return [("CLIENT", "TRACKING", "ON", "REDIRECT", redirect_id)]

    def _invalidate(self, key: str) -> None:
        self._records.pop(key, None)
        self._pending.pop(key, None)

    def _on_push(self, message: Any) -> None:
        if isinstance(message, list) and len(message) == 3 and message[0] == "message":
            keys = message[2]
            if keys is None:  # FLUSHDB / FLUSHALL
                self._clear()
            else:
                for key in keys:
                    self._invalidate(key)

    def _clear(self) -> None:
        self._records.clear()
        self._pending.clear()

    async def _listen_forever(self) -> None:
        backoff_s = 0.1
        while True:
            lost = asyncio.get_running_loop().create_future()
            try:
                # Called only while this iteration's protocol lives: `lost` is this iteration's.
                protocol, address = await self._reads.open_connection(lambda _: _set(lost), self._on_push)  # noqa: B023
                self._listener_connection = protocol
                try:
                    redirect_id = await protocol.send(pack(("CLIENT", "ID")))
                    await protocol.send(pack(("SUBSCRIBE", INVALIDATIONS)))
                    # The reads connection may track into an older id: make it start afresh.
                    self._reads.reconnect()
                    self._redirect = (redirect_id, address)
                    self._ready.set()
                    backoff_s = 0.1
                    await lost
                    log.warning("record cache: lost Redis's invalidations; off until they are back")
                finally:
                    protocol.abort(ConnectionError("closing"))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - logged; the cache stays off until back
                log.warning("record cache: invalidations unavailable (%s); retrying in %.1fs", error, backoff_s)
            finally:
                self._redirect = None
                self._listener_connection = None
                self._clear()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

