"""Live job events for every WatchProgress stream of this process, over one Redis connection.

The hub holds one subscription to the events channel and hands each event to the inboxes of the
streams that watch its job, so fifty thousand watchers cost one Redis connection, not fifty thousand.
Pub/sub delivery is at-most-once; `follow` makes the stream gap-free anyway by checking every
event's seq and reading the job's history (a Redis list) whenever a seq is skipped, the
connection was lost, or a heartbeat finds the job ahead of what was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from jobs import metrics
from jobs.errors import JobNotFound
from jobs.keys import CHANNEL_SEPARATOR, Keys
from jobs.model import TERMINAL_STATES, EventType, F, State
from jobs.store import Fields, JobStore
from server.errors import ServerShuttingDown
from server.inbox import TIMEOUT, Inbox

log = logging.getLogger(__name__)

# Inbox items that are not events.
RESYNC = object()  # events may have been missed: read the history
SHUTDOWN = object()  # the server is stopping

_INBOX_SIZE = 256


class WatchHub:
    def __init__(self, redis: Redis, keys: Keys, on_event: Callable[[str], None] = lambda job_id: None) -> None:
        self._redis = redis
        self._on_event = on_event  # told the job id of every event, watched or not
        self._channel = keys.events_channel
        self._inboxes: dict[str, set[Inbox]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closed = False

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever())
        await self._subscribed.wait()

    async def close(self) -> None:
        """Ends every watch with SHUTDOWN (and any that starts later), then stops reading."""
        self._closed = True
        for boxes in self._inboxes.values():
            for inbox in boxes:
                _deliver(inbox, SHUTDOWN)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    def subscribe(self, job_id: str) -> Inbox:
        """An inbox for the job's events; the caller must unsubscribe it (a plain pair, not a context
        manager: its generator and wrapper would cost every idle stream a few hundred bytes more)."""
        inbox = Inbox(_INBOX_SIZE)
        if self._closed:
            inbox.put(SHUTDOWN)  # a watch that slipped in while the server stops
        self._inboxes.setdefault(job_id, set()).add(inbox)
        metrics.WATCH_STREAMS.inc()
        return inbox

    def unsubscribe(self, job_id: str, inbox: Inbox) -> None:
        metrics.WATCH_STREAMS.dec()
        boxes = self._inboxes[job_id]
        boxes.discard(inbox)
        if not boxes:
            del self._inboxes[job_id]

    async def _read_forever(self) -> None:
        backoff_s = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self._subscribed.set()
                        backoff_s = 0.1
                    elif message["type"] == "message":
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except Exception:
                log.warning("watch hub lost Redis; reconnecting in %.1fs", backoff_s, exc_info=True)
                await pubsub.aclose()
                # Whatever was published meanwhile is in the jobs' histories.
                for boxes in self._inboxes.values():
                    for inbox in boxes:
                        _deliver(inbox, RESYNC)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    def _dispatch(self, data: str) -> None:
        job_id, _, payload = data.partition(CHANNEL_SEPARATOR)
        self._on_event(job_id)
        boxes = self._inboxes.get(job_id)
        if not boxes:
            return
        event = json.loads(payload)  # parsed once, shared by every watcher of the job
        for inbox in boxes:
            _deliver(inbox, event)


def _deliver(inbox: Inbox, item: Any) -> None:
    if inbox.full():
        # A watcher this far behind reads the history instead of holding events in memory.
        inbox.clear()
        item = SHUTDOWN if item is SHUTDOWN else RESYNC
    inbox.put(item)


@dataclass(frozen=True)
class Update:
    """One message of a watch: a snapshot, a change, or a heartbeat (fields is None)."""

    type: str
    seq: int
    fields: Fields | None


def _is_terminal(fields: Fields) -> bool:
    return fields[F.STATE] in TERMINAL_STATES


async def follow(
    store: JobStore, hub: WatchHub, job_id: str, tenant: str, after_seq: int, heartbeat_s: float
) -> AsyncIterator[Update]:
    """The updates of one of `tenant`'s jobs from `after_seq` on, gap-free and without repeats, until
    it ends. The ownership check at the start covers the whole watch: a job never changes hands."""
    inbox = hub.subscribe(job_id)
    try:
        # Subscribed before reading, so no change can fall between the read and the live events.
        job = await store.get(job_id, tenant, with_file_ids=False)
        if after_seq == 0 or job[F.STATE] == State.EXPIRED:
            yield Update(EventType.SNAPSHOT, int(job.get(F.SEQ, 0)), job)
            if _is_terminal(job):
                return
            last = int(job[F.SEQ])
        else:
            last = after_seq
            async for update in _catch_up(store, job_id, tenant, last):
                yield update
                last = update.seq
                if _is_terminal(update.fields):  # type: ignore[arg-type]
                    return
            if _is_terminal(job) and last >= int(job[F.SEQ]):
                return
        # An idle watch waits below for hours: it keeps nothing of the record it no longer needs.
        del job

        while True:
            item = await inbox.get(heartbeat_s)
            if item is TIMEOUT:
                latest = await store.latest_seq(job_id)
                if not latest:
                    raise JobNotFound(job_id)  # forgotten (DeleteOperation) while watched
                if latest <= last:
                    yield Update("HEARTBEAT", last, None)
                    continue
                item = RESYNC  # a notification was lost; the history has it
            if item is SHUTDOWN:
                raise ServerShuttingDown(last)
            if item is not RESYNC and int(item[F.SEQ]) <= last:
                continue
            if item is RESYNC or int(item[F.SEQ]) > last + 1:
                updates = [u async for u in _catch_up(store, job_id, tenant, last)]
            else:
                updates = [Update(item[F.EVENT], int(item[F.SEQ]), item)]
            for update in updates:
                yield update
                last = update.seq
                if _is_terminal(update.fields):  # type: ignore[arg-type]
                    return
    finally:
        hub.unsubscribe(job_id, inbox)


async def _catch_up(store: JobStore, job_id: str, tenant: str, after_seq: int) -> AsyncIterator[Update]:
    """The stored events after `after_seq`, or a fresh snapshot when that history is gone."""
    events = await store.events_after(job_id, after_seq)
    if events is None:
        job = await store.get(job_id, tenant, with_file_ids=False)
        yield Update(EventType.SNAPSHOT, int(job.get(F.SEQ, 0)), job)
        return
    for event in events:
        yield Update(event[F.EVENT], int(event[F.SEQ]), event)
