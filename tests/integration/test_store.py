"""The job store's guarantees, straight against Redis: a finished job never changes, a superseded
run cannot write, and every change is in the history with the next seq."""

from __future__ import annotations

import json

import pytest

from jobs.connections import redis_client
from jobs.errors import JobNotFound, RunSuperseded
from jobs.model import F, EventType, State
from jobs.schedule import Schedule
from jobs.storage import artifact_key
from jobs.store import JobStore, finish_fields, now_ms


@pytest.fixture
async def store(settings):
    redis = redis_client(settings)
    yield JobStore(redis, settings)
    await redis.aclose()


async def test_a_takeover_fences_the_old_run(store) -> None:
    fields, _ = await store.create([70000])
    job_id = fields[F.ID]
    assert await store.claim(job_id, "worker-a", "token-a") is not None
    await store.report(job_id, "token-a", {F.PERCENT: "10"})

    # worker-a is presumed dead; its job is given to worker-b.
    taken = await store.claim(job_id, "worker-b", "token-b")
    assert taken[F.ATTEMPTS] == "2" and taken[F.WORKER] == "worker-b"

    with pytest.raises(RunSuperseded, match="another worker took it over"):
        await store.report(job_id, "token-a", {F.PERCENT: "50"})
    done = finish_fields(State.COMPLETED, store.settings, "ok") | {F.RESULT: json.dumps({"by": "b"})}
    await store.report(job_id, "token-b", done, EventType.STATE_CHANGED)

    # The old run wakes up and tries to write its own result: refused, the first result stands.
    with pytest.raises(RunSuperseded, match="COMPLETED"):
        await store.report(job_id, "token-a", done | {F.RESULT: json.dumps({"by": "a"})}, EventType.STATE_CHANGED)
    record = await store.get(job_id)
    assert json.loads(record[F.RESULT]) == {"by": "b"}
    assert record[F.STATE] == State.COMPLETED


async def test_a_cancelled_job_cannot_be_claimed_or_completed(store) -> None:
    fields, _ = await store.create([70000])
    job_id = fields[F.ID]
    await store.claim(job_id, "w", "t")
    await store.cancel(job_id)
    with pytest.raises(RunSuperseded, match="CANCELLED"):
        await store.report(job_id, "t", finish_fields(State.COMPLETED, store.settings, "ok"))
    assert await store.claim(job_id, "w2", "t2") is None
    assert (await store.get(job_id))[F.STATE] == State.CANCELLED


async def test_every_change_is_in_the_history_in_order(store) -> None:
    fields, _ = await store.create([70000, 70007])
    job_id = fields[F.ID]
    await store.claim(job_id, "w", "t")
    for percent in (10, 20, 30):
        await store.report(job_id, "t", {F.PERCENT: percent})
    history = await store.events_after(job_id, 0)
    assert [int(e[F.SEQ]) for e in history] == [1, 2, 3, 4, 5]
    assert [e[F.EVENT] for e in history] == ["STATE_CHANGED", "STATE_CHANGED", "PROGRESS", "PROGRESS", "PROGRESS"]
    assert [e[F.PERCENT] for e in history[2:]] == ["10", "20", "30"]
    assert all(F.FILE_IDS not in e and F.TOKEN not in e for e in history), "events leave out bulk and secrets"
    assert await store.events_after(job_id, 3) == history[3:]
    assert await store.events_after(job_id, 5) == []


async def test_finished_records_and_histories_get_a_ttl(store) -> None:
    fields, _ = await store.create([70000])
    job_id = fields[F.ID]
    redis = store.redis
    assert await redis.ttl(store.keys.job(job_id)) == -1, "a live job never expires"
    await store.cancel(job_id)
    ttl = store.settings.job_ttl_s
    assert 0 < await redis.ttl(store.keys.job(job_id)) <= ttl
    assert 0 < await redis.ttl(store.keys.events(job_id)) <= ttl
    assert await redis.ttl(store.keys.tombstone(job_id)) > ttl
    # ...and its artifact (if any) is scheduled for deletion when the record expires.
    deleted_at = await redis.zscore(store.keys.sweep, artifact_key(job_id))
    assert abs(deleted_at - (now_ms() + ttl * 1000)) < 5_000


async def test_discard_removes_every_trace(store) -> None:
    fields, _ = await store.create([70000], request_id="r-1")
    assert await store.redis.zscore(store.keys.outbox, fields[F.ID]), "a new job waits in the outbox"
    await store.discard(fields[F.ID], "r-1")
    assert await store.redis.zcard(store.keys.outbox) == 0
    with pytest.raises(JobNotFound):
        await store.get(fields[F.ID])
    again, created = await store.create([70000], request_id="r-1")
    assert created and again[F.ID] != fields[F.ID]
    assert [j[F.ID] for j in (await store.list(10))[0]] == [again[F.ID]]


async def test_a_schedule_leases_each_due_chore_to_one_taker_until_done(store) -> None:
    schedule = Schedule(store.redis, store.keys.sweep)
    await store.redis.zadd(store.keys.sweep, {"a": 100, "b": 200, "later": 10_000})
    assert sorted(await schedule.claim_due(500, 10, lease_ms=1_000)) == ["a", "b"]
    assert await schedule.claim_due(600, 10, lease_ms=1_000) == [], "leased chores are not handed out twice"
    await schedule.done(["a"])
    # The taker of "b" died without finishing: it falls due again when its lease ends.
    assert await schedule.claim_due(1_500, 10, lease_ms=1_000) == ["b"]
    await schedule.done(["b"])
    await store.redis.zadd(store.keys.sweep, {"also-later": 10_001})
    assert await schedule.claim_due(20_000, 1, lease_ms=1_000) == ["later"], "at most `limit` at a time"
