"""The job store's guarantees, straight against Redis: a finished job never changes, a superseded
run cannot write, and every change is in the history with the next seq."""

from __future__ import annotations

import json

import pytest

from jobs.connections import multiplexed_redis, redis_client
from jobs.errors import JobNotFound, QuotaExceeded, RunSuperseded
from jobs.model import EventType, F, State
from jobs.schedule import Schedule
from jobs.storage import artifact_key
from jobs.store import JobStore, finish_fields, now_ms
from jobs.tenants import tenant_slug
from tests.credentials import OTHER_TENANT, TENANT


@pytest.fixture(params=["pooled", "multiplexed"])
async def store(settings, request):
    """Every guarantee holds whichever client carries the per-call commands (the server and workers
    use the multiplexed one)."""
    redis = redis_client(settings)
    commands = multiplexed_redis(settings) if request.param == "multiplexed" else None
    yield JobStore(redis, settings, commands)
    if commands is not None:
        await commands.aclose()
    await redis.aclose()


async def test_a_takeover_fences_the_old_run(store) -> None:
    fields, _ = await store.create(TENANT, [70000])
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
    record = await store.get(job_id, TENANT)
    assert json.loads(record[F.RESULT]) == {"by": "b"}
    assert record[F.STATE] == State.COMPLETED


async def test_a_cancelled_job_cannot_be_claimed_or_completed(store) -> None:
    fields, _ = await store.create(TENANT, [70000])
    job_id = fields[F.ID]
    await store.claim(job_id, "w", "t")
    await store.cancel(job_id, TENANT)
    with pytest.raises(RunSuperseded, match="CANCELLED"):
        await store.report(job_id, "t", finish_fields(State.COMPLETED, store.settings, "ok"))
    assert await store.claim(job_id, "w2", "t2") is None
    assert (await store.get(job_id, TENANT))[F.STATE] == State.CANCELLED


async def test_every_change_is_in_the_history_in_order(store) -> None:
    fields, _ = await store.create(TENANT, [70000, 70007])
    job_id = fields[F.ID]
    await store.claim(job_id, "w", "t")
    for percent in (10, 20, 30):
        await store.report(job_id, "t", {F.PERCENT: percent})
    assert await store.events_after(job_id, 0) is None, "the creation is no event: a watch from the start opens with a snapshot"
    history = await store.events_after(job_id, 1)
    assert [int(e[F.SEQ]) for e in history] == [2, 3, 4, 5]
    assert [e[F.EVENT] for e in history] == ["STATE_CHANGED", "PROGRESS", "PROGRESS", "PROGRESS"]
    assert [e[F.PERCENT] for e in history[1:]] == ["10", "20", "30"]
    assert all(F.FILE_IDS not in e and F.TOKEN not in e for e in history), "events leave out bulk and secrets"
    assert await store.events_after(job_id, 3) == history[2:]
    assert await store.events_after(job_id, 5) == []


async def test_finished_records_and_histories_get_a_ttl(store) -> None:
    fields, _ = await store.create(TENANT, [70000])
    job_id = fields[F.ID]
    redis = store.redis
    assert await redis.ttl(store.keys.job(job_id)) == -1, "a live job never expires"
    await store.cancel(job_id, TENANT)
    ttl = store.settings.job_ttl_s
    assert 0 < await redis.ttl(store.keys.job(job_id)) <= ttl
    assert 0 < await redis.ttl(store.keys.events(job_id)) <= store.settings.event_history_ttl_s < ttl
    assert await redis.ttl(store.keys.tombstone(job_id)) > ttl
    # ...and its artifact (if any) is scheduled for deletion when the record expires.
    deleted_at = await redis.zscore(store.keys.sweep, artifact_key(store.settings.redis_prefix, tenant_slug(TENANT), job_id))
    assert abs(deleted_at - (now_ms() + ttl * 1000)) < 5_000


async def test_forget_removes_every_trace(store) -> None:
    fields, _ = await store.create(TENANT, [70000], request_id="r-1")
    slug = tenant_slug(TENANT)
    assert await store.redis.zscore(store.keys.live, fields[F.ID]), "a new job is live"
    assert await store.redis.sismember(store.keys.active(slug), fields[F.ID]), "and counts as active"
    await store.forget(fields[F.ID])
    assert await store.redis.zcard(store.keys.live) == 0
    assert await store.redis.scard(store.keys.active(slug)) == 0
    with pytest.raises(JobNotFound):
        await store.get(fields[F.ID], TENANT)
    again, created = await store.create(TENANT, [70000], request_id="r-1")
    assert created and again[F.ID] != fields[F.ID]
    assert [j[F.ID] for j in (await store.list(TENANT, 10))[0]] == [again[F.ID]]


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


async def test_another_tenants_job_is_not_found_by_any_means(store) -> None:
    fields, _ = await store.create(TENANT, [70000], request_id="same-id")
    job_id = fields[F.ID]
    for attempt in (
        store.get(job_id, OTHER_TENANT),
        store.cancel(job_id, OTHER_TENANT),
        store.forget(job_id, OTHER_TENANT),
    ):
        with pytest.raises(JobNotFound):
            await attempt
    assert (await store.list(OTHER_TENANT, 10))[0] == []
    theirs, created = await store.create(OTHER_TENANT, [70000], request_id="same-id")
    assert created and theirs[F.ID] != job_id, "idempotency keys are per tenant"
    assert (await store.get(job_id, TENANT))[F.STATE] == State.QUEUED, "untouched by the other tenant"

    await store.cancel(job_id, TENANT)
    await store.redis.delete(store.keys.job(job_id))  # as if its retention had run out
    assert (await store.get(job_id, TENANT))[F.STATE] == State.EXPIRED
    with pytest.raises(JobNotFound):
        await store.get(job_id, OTHER_TENANT)


async def test_the_active_jobs_quota_counts_live_jobs_only(settings) -> None:
    redis = redis_client(settings)
    store = JobStore(redis, settings.replace(tenant_max_active_jobs=2))
    try:
        first, _ = await store.create(TENANT, [70000])
        second, _ = await store.create(TENANT, [70001])
        with pytest.raises(QuotaExceeded, match="2 downloads queued or running"):
            await store.create(TENANT, [70002])
        again, created = await store.create(OTHER_TENANT, [70002])
        assert created, "each tenant has its own quota"
        await store.cancel(first[F.ID], TENANT)
        third, created = await store.create(TENANT, [70002])
        assert created, "a finished job frees its place"
        await redis.delete(store.keys.job(second[F.ID]))  # a member whose record vanished
        fourth, created = await store.create(TENANT, [70003])
        assert created, "a stray member cannot hold the quota for good"
        assert await redis.smembers(store.keys.active(tenant_slug(TENANT))) == {third[F.ID], fourth[F.ID]}
    finally:
        await redis.aclose()
