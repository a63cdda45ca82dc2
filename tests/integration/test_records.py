"""The server's record cache (server/records.py) against a real Redis: whatever changes a job, from
whichever process, the cache never answers with the state before it for longer than Redis takes to
say so."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from jobs.connections import multiplexed_redis, redis_client
from jobs.convert import Presigner
from jobs.errors import JobNotFound
from jobs.model import EventType, F, State
from jobs.store import JobStore, finish_fields
from longhaul.download.v1 import download_pb2 as pb
from server.records import RecordCache
from tests.credentials import OTHER_TENANT, TENANT


@pytest.fixture
async def stores(settings):
    """(the cache, its server's store, another process's store: a worker's or another server's)."""
    redis = redis_client(settings)
    server_store = JobStore(redis, settings, multiplexed_redis(settings))
    other = JobStore(redis, settings, multiplexed_redis(settings))
    cache = RecordCache(server_store, Presigner(settings), settings, capacity=100)
    server_store.on_write = cache.drop
    await cache.start()
    yield cache, server_store, other
    await cache.close()
    await redis.aclose()


async def eventually(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


async def test_a_record_read_once_is_served_from_memory(stores) -> None:
    cache, store, _ = stores
    job_id = (await store.create(TENANT, [70000]))[0][F.ID]
    first = await cache.get(job_id, TENANT)
    assert job_id in cache
    assert await cache.get(job_id, TENANT) is first
    assert F.TOKEN not in first


async def test_a_change_by_another_process_reaches_the_cache(stores) -> None:
    cache, _, other = stores
    job_id = (await other.create(TENANT, [70000]))[0][F.ID]
    assert (await cache.get(job_id, TENANT))[F.STATE] == State.QUEUED
    await other.claim(job_id, "worker-a", "token-a")
    await other.report(job_id, "token-a", {F.PERCENT: "40"})

    async def seen() -> bool:
        return (await cache.get(job_id, TENANT)).get(F.PERCENT) == "40"

    await eventually(seen, 2.0)
    assert (await cache.get(job_id, TENANT))[F.STATE] == State.RUNNING


async def test_this_servers_own_write_is_read_back_at_once(stores) -> None:
    cache, store, _ = stores
    job_id = (await store.create(TENANT, [70000]))[0][F.ID]
    await cache.get(job_id, TENANT)
    await store.cancel(job_id, TENANT)
    assert (await cache.get(job_id, TENANT))[F.STATE] == State.CANCELLED


async def test_a_job_forgotten_elsewhere_is_not_found(stores) -> None:
    cache, _, other = stores
    job_id = (await other.create(TENANT, [70000]))[0][F.ID]
    await cache.get(job_id, TENANT)
    await other.forget(job_id, TENANT)

    async def gone() -> bool:
        try:
            await cache.get(job_id, TENANT)
        except JobNotFound:
            return True
        return False

    await eventually(gone, 2.0)


async def test_a_record_that_expires_in_redis_reads_expired(stores) -> None:
    cache, store, _ = stores
    job_id = (await store.create(TENANT, [70000]))[0][F.ID]
    await cache.get(job_id, TENANT)
    # What the end of a job's retention does: the record goes, its tombstone says whose it was.
    await store.redis.set(store.keys.tombstone(job_id), TENANT)
    await store.redis.pexpire(store.keys.job(job_id), 50)

    async def expired() -> bool:
        return (await cache.get(job_id, TENANT))[F.STATE] == State.EXPIRED

    await eventually(expired, 5.0)


async def test_another_tenants_job_is_not_found_even_from_memory(stores) -> None:
    cache, store, _ = stores
    job_id = (await store.create(TENANT, [70000]))[0][F.ID]
    await cache.get(job_id, TENANT)
    with pytest.raises(JobNotFound):
        await cache.get(job_id, OTHER_TENANT)


async def test_a_read_that_raced_a_change_is_not_kept(stores) -> None:
    cache, store, _ = stores
    job_id = (await store.create(TENANT, [70000]))[0][F.ID]
    reading = asyncio.create_task(cache.get(job_id, TENANT))
    await asyncio.sleep(0)  # the read is on its way
    cache.drop(job_id)  # a change is seen before its reply
    await reading
    assert job_id not in cache


async def test_losing_the_invalidations_empties_the_cache_until_they_are_back(stores) -> None:
    cache, store, other = stores
    job_id = (await store.create(TENANT, [70000]))[0][F.ID]
    await cache.get(job_id, TENANT)
    assert job_id in cache
    await store.redis.client_kill_filter(_type="pubsub", skipme=True)

    async def emptied() -> bool:
        return job_id not in cache

    await eventually(emptied)

    async def back() -> bool:
        await cache.get(job_id, TENANT)
        return job_id in cache

    await eventually(back)
    # ...and invalidations reach it again through the new connection.
    await other.claim(job_id, "worker-a", "token-a")

    async def seen() -> bool:
        return (await cache.get(job_id, TENANT))[F.STATE] == State.RUNNING

    await eventually(seen, 2.0)


async def test_the_oldest_records_make_room(settings, stores) -> None:
    cache, store, _ = stores
    job_ids = [(await store.create(TENANT, [70000]))[0][F.ID] for _ in range(101)]
    for job_id in job_ids:
        await cache.get(job_id, TENANT)
    assert job_ids[0] not in cache and job_ids[-1] in cache


async def test_without_client_tracking_the_cache_is_off_and_reads_go_to_redis(settings, monkeypatch) -> None:
    redis = redis_client(settings)
    store = JobStore(redis, settings, multiplexed_redis(settings))
    cache = RecordCache(store, Presigner(settings), settings, capacity=100)
    # What a Redis before 6.0, or one that forbids CLIENT commands, answers.
    monkeypatch.setattr(cache._reads, "_setup", lambda address: [("CLIENT", "NO-SUCH-SUBCOMMAND")])  # noqa: SLF001 - a private handshake
    try:
        await cache.start()
        assert not cache.enabled
        job_id = (await store.create(TENANT, [70000]))[0][F.ID]
        assert (await cache.get(job_id, TENANT))[F.STATE] == State.QUEUED
        assert job_id not in cache
    finally:
        await cache.close()
        await redis.aclose()


async def test_the_job_message_is_built_once_per_version_and_again_when_its_url_is_half_used(settings, stores) -> None:
    _, store, other = stores
    now = [time.time()]
    presigner = Presigner(settings, clock=lambda: now[0])
    cache = RecordCache(store, presigner, settings, capacity=100)
    await cache.start()
    try:
        job_id = (await store.create(TENANT, [70000]))[0][F.ID]
        queued = await cache.job(job_id, TENANT)
        assert await cache.job(job_id, TENANT) is queued
        await other.claim(job_id, "worker-a", "token-a")
        done = finish_fields(State.COMPLETED, store.settings, "ok") | {F.RESULT: json.dumps(
            {"size_bytes": 1, "sha256": "0" * 64, "files": []}
        )}
        await other.report(job_id, "token-a", done, EventType.STATE_CHANGED)

        async def completed() -> bool:
            return (await cache.job(job_id, TENANT)).state == pb.JOB_STATE_COMPLETED

        await eventually(completed, 2.0)
        first = await cache.job(job_id, TENANT)
        assert first.result.download_url.startswith("http")
        signed_at = int(now[0] * 1000)
        assert first.result.url_expire_time.ToMilliseconds() == signed_at + settings.presign_ttl_s * 1000
        now[0] += settings.presign_ttl_s / 2 - 1  # more than half its life left: the same message
        assert await cache.job(job_id, TENANT) is first
        now[0] += 2  # less than half: signed again, valid a whole PRESIGN_TTL_S from now
        again = await cache.job(job_id, TENANT)
        assert again is not first
        assert again.result.url_expire_time.ToMilliseconds() == int(now[0] * 1000) + settings.presign_ttl_s * 1000
    finally:
        await cache.close()


def test_a_url_is_signed_again_once_half_its_life_is_gone_and_never_outlives_the_job(settings) -> None:
    now = [1_800_000_000.0]
    presigner = Presigner(settings, clock=lambda: now[0])
    ttl_ms = settings.presign_ttl_s * 1000
    url, expires = presigner.url("tenants/t/a.zip", "a.zip")
    assert expires == 1_800_000_000_000 + ttl_ms
    now[0] += ttl_ms / 2000 - 1
    assert presigner.url("tenants/t/a.zip", "a.zip") == (url, expires)
    assert presigner.url("tenants/t/b.zip", "b.zip")[0] != url, "each artifact has its own"
    now[0] += 2
    assert presigner.url("tenants/t/a.zip", "a.zip")[1] == int(now[0] * 1000) + ttl_ms
    # A job expiring in 100 s gets a URL that ends with it, reused to the end: a new one would not last longer.
    job_expires = int(now[0] * 1000) + 100_000
    url, expires = presigner.url("tenants/t/c.zip", "c.zip", job_expires)
    assert expires == job_expires
    now[0] += 90
    assert presigner.url("tenants/t/c.zip", "c.zip", job_expires) == (url, expires)
