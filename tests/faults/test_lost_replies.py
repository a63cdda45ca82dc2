"""Job writes whose reply is lost on the way back (the write ran in Redis; the client saw the
connection drop and sent it again): each change happens once, the history has no gap or repeat,
and the caller gets the answer of the write that ran. Through a lossy proxy in front of a real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from jobs.connections import multiplexed_redis, redis_client
from jobs.model import EventType, F, State
from jobs.store import JobStore, finish_fields
from tests.credentials import TENANT
from tests.lossy_proxy import LossyProxy


@pytest.fixture
async def proxy(settings) -> AsyncIterator[LossyProxy]:
    redis_port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = await LossyProxy(redis_port).start()
    yield proxy
    await proxy.close()


@pytest.fixture(params=["pooled", "multiplexed"])
async def store(settings, proxy, request) -> AsyncIterator[JobStore]:
    """Both clients send a command again after a lost connection (the server and workers use the
    multiplexed one)."""
    through_proxy = settings.replace(redis_url=proxy.url)
    redis = redis_client(through_proxy)
    commands = multiplexed_redis(through_proxy) if request.param == "multiplexed" else None
    store = JobStore(redis, through_proxy, commands)
    # Warmed up: the connections are open and Redis has the scripts, so the reply that is lost is
    # the script's own (not a NOSCRIPT that makes the client send the script anyway).
    warm_up, _ = await store.create(TENANT, [70000])
    await store.claim(warm_up[F.ID], "warm-up", "warm-up")
    await store.forget(warm_up[F.ID])
    yield store
    if commands is not None:
        await commands.aclose()
    await redis.aclose()


async def history(store: JobStore, job_id: str) -> list[int]:
    return [int(json.loads(entry)[F.SEQ]) for entry in await store.redis.lrange(store.keys.events(job_id), 0, -1)]


@pytest.fixture(params=["whole", "half"])
def lose(request, proxy: LossyProxy):
    """Arms the proxy to drop the next reply entirely, or to cut the connection halfway through it."""
    return lambda: proxy.lose_next_reply(request.param)


async def test_a_create_whose_reply_is_lost_makes_one_job_and_answers_it(store, proxy, lose) -> None:
    lose()
    fields, created = await store.create(TENANT, [70000])  # no request id: nothing else dedups it
    assert proxy.lost_replies == 1
    assert created
    jobs, _ = await store.list(TENANT, 10)
    assert [job[F.ID] for job in jobs] == [fields[F.ID]]
    assert (await store.get(fields[F.ID], TENANT))[F.SEQ] == "1"
    assert await history(store, fields[F.ID]) == [], "the history starts with the first change"


async def test_a_claim_whose_reply_is_lost_counts_one_attempt(store, proxy, lose) -> None:
    fields, _ = await store.create(TENANT, [70000])
    lose()
    claimed = await store.claim(fields[F.ID], "worker-a", "token-a")
    assert proxy.lost_replies == 1
    assert claimed is not None and claimed[F.ATTEMPTS] == "1" and claimed[F.FILE_IDS] == "[70000]"
    assert await history(store, fields[F.ID]) == [2]


async def test_progress_and_a_result_whose_replies_are_lost_are_recorded_once(store, proxy, lose) -> None:
    fields, _ = await store.create(TENANT, [70000])
    job_id = fields[F.ID]
    await store.claim(job_id, "worker-a", "token-a")
    lose()
    assert await store.report(job_id, "token-a", {F.PERCENT: "40"}) == 3
    lose()
    # Without care, the repeat would find the job finished and tell the run it was superseded.
    assert await store.report(job_id, "token-a", finish_fields(State.COMPLETED, store.settings, "ready")) == 4
    assert proxy.lost_replies == 2
    assert await history(store, job_id) == [2, 3, 4]


async def test_a_cancel_and_a_forget_whose_replies_are_lost_answer_as_the_first_did(store, proxy, lose) -> None:
    cancelled, forgotten = [(await store.create(TENANT, [70000]))[0][F.ID] for _ in range(2)]
    lose()
    assert (await store.cancel(cancelled, TENANT))[F.STATE] == State.CANCELLED
    assert await history(store, cancelled) == [2]
    lose()
    await store.forget(forgotten, TENANT)  # the repeat finds nothing to forget: not "not found"
    assert proxy.lost_replies == 2


async def test_a_retry_whose_reply_is_lost_runs_the_job_once_more(store, proxy, lose) -> None:
    job_id = (await store.create(TENANT, [70000]))[0][F.ID]
    await store.cancel(job_id, TENANT)
    lose()
    retried = await store.retry(job_id, TENANT)
    assert proxy.lost_replies == 1
    assert (retried[F.STATE], retried[F.RETRIES], retried[F.SEQ]) == (State.QUEUED, "1", "3")
    assert await history(store, job_id) == [2, 3]
    handed_to_relay = [entry for entry in await store.redis.lrange(store.keys.fresh, 0, -1) if entry.startswith(job_id)]
    assert handed_to_relay == [f"{job_id} NORMAL", f"{job_id} NORMAL 1"], "the create's run and the retry's, once each"


async def test_a_state_change_tried_again_as_the_same_call_is_applied_once(store) -> None:
    # What a worker does when Redis stays away longer than the client's own retries: it tries the
    # state change again later, as the same call.
    fields, _ = await store.create(TENANT, [70000])
    job_id = fields[F.ID]
    await store.claim(job_id, "worker-a", "token-a")
    call = store.new_call()
    for _ in range(2):
        done = finish_fields(State.FAILED, store.settings, "gave up")
        assert await store.report(job_id, "token-a", done, EventType.STATE_CHANGED, call=call) == 3
    assert await history(store, job_id) == [2, 3]
