"""Signed completion webhooks, against real Redis, SeaweedFS, workers and a real HTTP receiver that
verifies every signature with the `standardwebhooks` package (tests/webhook_receiver.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import grpc
import pytest

from devstack.processes import ManagedProcess
from devstack.seed import seed_sources
from devstack.services import python_process
from jobs.connections import redis_client, s3_client_kwargs, s3_session
from jobs.keys import Keys
from jobs.webhooks import new_secret, tenant_line
from longhaul.admin.v1 import admin_pb2 as apb
from longhaul.admin.v1 import admin_pb2_grpc as apb_grpc
from longhaul.download.v1 import download_pb2 as pb
from longhaul_client import AsyncClient
from tests import credentials
from tests.conftest import SMALL_IDS
from tests.credentials import TENANT, TOKEN, WEBHOOK_SECRET
from tests.helpers import initiate, wait_done
from tests.webhook_receiver import Delivery, Receiver

# Deliveries retried quickly (the tests' settings sign with WEBHOOK_SECRET and allow 127.0.0.1).
WEBHOOKS = {"webhook_retry_delays_s": "0.2,0.2,0.2"}
OPERATOR = credentials.bearer(credentials.OPERATOR_TOKEN)


@pytest.fixture
async def receive():
    receivers: list[Receiver] = []

    async def start(secret: str = WEBHOOK_SECRET, **behaviour: object) -> Receiver:
        receiver = await Receiver(secret, **behaviour).start()  # type: ignore[arg-type]
        receivers.append(receiver)
        return receiver

    yield start
    for receiver in receivers:
        await receiver.stop()


async def webhook_settled(stub, job_id: str, timeout_s: float = 15) -> pb.Job:
    """The job once its delivery is over (delivered or given up)."""
    async with asyncio.timeout(timeout_s):
        while True:
            job = (await stub.GetStatus(pb.GetStatusRequest(job_id=job_id))).job
            if job.webhook.state in (pb.WEBHOOK_STATE_DELIVERED, pb.WEBHOOK_STATE_GAVE_UP):
                return job
            await asyncio.sleep(0.05)


async def scheduled(settings, job_id: str) -> float | None:
    redis = redis_client(settings)
    try:
        return await redis.zscore(Keys(settings.redis_prefix).webhooks, job_id)
    finally:
        await redis.aclose()


async def test_an_ending_is_delivered_signed_and_again_after_each_failure_until_the_receiver_takes_it(
    make_stack, receive
) -> None:
    stack = await make_stack(**WEBHOOKS)
    receiver = await receive(answers=[500, 500])
    async with AsyncClient(stack.address, token=TOKEN) as client:
        job = await client.initiate(SMALL_IDS[:2], callback_url=receiver.url)
    assert (job.webhook.url, job.webhook.state) == (receiver.url, pb.WEBHOOK_STATE_WAITING)

    deliveries = [await receiver.next() for _ in range(3)]
    assert [d.answered for d in deliveries] == [500, 500, 200]
    assert len({d.webhook_id for d in deliveries}) == 1, "every duplicate carries the same webhook-id"
    payload = deliveries[-1].payload
    assert payload["type"] == "download.completed" and deliveries[0].path_qs == "/hooks/longhaul?source=tests"
    data = payload["data"]
    assert (data["jobId"], data["state"], data["filesTotal"]) == (job.job_id, "JOB_STATE_COMPLETED", 2)
    assert data["result"]["downloadUrl"].startswith(stack.settings.s3_endpoint)

    done = await webhook_settled(stack.stub, job.job_id)
    hook = done.webhook
    assert (hook.state, hook.attempts, hook.webhook_id) == (pb.WEBHOOK_STATE_DELIVERED, 3, deliveries[0].webhook_id)
    assert [(a.http_status, a.error) for a in hook.recent_attempts] == [(500, "HTTP 500"), (500, "HTTP 500"), (200, "")]
    times = [a.time.ToMilliseconds() for a in hook.recent_attempts]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert all(gap >= 180 for gap in gaps), f"each retry waits its delay (0.2 s, less up to a tenth): {gaps}"
    assert not hook.HasField("next_attempt_time")
    assert await scheduled(stack.settings, job.job_id) is None, "delivered: nothing more is due"
    await asyncio.sleep(0.5)  # three retry delays: a delivery wrongly still due would have come
    assert receiver.nothing_more()


async def test_a_failed_jobs_delivery_gives_up_after_its_last_retry(make_stack, receive) -> None:
    stack = await make_stack(**WEBHOOKS | {"webhook_retry_delays_s": "0.1,0.1"})
    receiver = await receive(then=503)
    job = await initiate(stack.stub, [90_000_000 + random.randrange(1_000_000)], callback_url=receiver.url)
    assert (await wait_done(stack.stub, job.job_id)).state == pb.JOB_STATE_FAILED
    done = await webhook_settled(stack.stub, job.job_id)
    assert (done.webhook.state, done.webhook.attempts) == (pb.WEBHOOK_STATE_GAVE_UP, 3)
    assert [d.payload["type"] for d in receiver.deliveries] == ["download.failed"] * 3
    assert receiver.deliveries[0].payload["data"]["error"]["code"] == "JOB_ERROR_CODE_ALL_FILES_MISSING"
    assert await scheduled(stack.settings, job.job_id) is None


async def test_a_job_retried_in_place_drops_its_last_endings_delivery_and_announces_the_next(make_stack, receive) -> None:
    # After the failure's first attempt, its retry is far off: the job is retried in place before it.
    # The run after the retry takes a second, to look at the schedule before the new ending.
    stack = await make_stack(**WEBHOOKS | {"webhook_retry_delays_s": "3600", "delay_min_ms": 1000, "delay_max_ms": 1000})
    receiver = await receive(answers=[500])
    file_id = 90_000_000 + random.randrange(1_000_000)  # not in S3 yet: the job fails
    job = await initiate(stack.stub, [file_id], callback_url=receiver.url)
    failure = await receiver.next()
    assert failure.payload["type"] == "download.failed"
    async with asyncio.timeout(10):
        while (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job.webhook.attempts != 1:
            await asyncio.sleep(0.05)
    assert await scheduled(stack.settings, job.job_id) is not None, "its retry is due in an hour"
    stats = await apb_grpc.AdminServiceStub(stack.channel).GetQueueStats(apb.GetQueueStatsRequest(), metadata=OPERATOR)
    assert stats.webhooks_pending == 1, "operators see it waiting"

    async with s3_session().client("s3", **s3_client_kwargs(stack.settings)) as s3:
        await seed_sources(s3, stack.settings, [file_id])
    retried = (await stack.stub.RetryDownload(pb.RetryDownloadRequest(job_id=job.job_id))).job
    assert (retried.webhook.url, retried.webhook.state, retried.webhook.attempts) == (receiver.url, pb.WEBHOOK_STATE_WAITING, 0)
    assert await scheduled(stack.settings, job.job_id) is None, "the failure's delivery is dropped with it"

    completion = await receiver.next()
    assert (completion.payload["type"], completion.answered) == ("download.completed", 200)
    assert completion.webhook_id != failure.webhook_id, "a new ending, a new webhook-id"
    done = await webhook_settled(stack.stub, job.job_id)
    assert (done.webhook.webhook_id, done.webhook.attempts) == (completion.webhook_id, 1)


async def test_tenants_default_url_and_own_secret(make_stack, receive, work_dir) -> None:
    tenant_secret = new_secret()
    receiver = await receive(tenant_secret)
    keys = work_dir / f"api-keys-{random.randrange(10**9)}"
    credentials.write_key_file(keys)
    with keys.open("a") as file:
        file.write(tenant_line(TENANT, tenant_secret, receiver.url) + "\n")
    stack = await make_stack(**WEBHOOKS | {"api_keys_file": str(keys)})
    job = await initiate(stack.stub, SMALL_IDS[:1])  # names no callback_url
    delivery = await receiver.next()
    assert delivery.answered == 200, "signed with the tenant's own secret, not WEBHOOK_SECRET"
    assert delivery.payload["data"]["jobId"] == job.job_id


@pytest.mark.parametrize(
    ("url", "allowed", "problem"),
    [
        ("ftp://127.0.0.1/hook", "127.0.0.1", "must be an http:// or https:// URL"),
        ("http://10.1.2.3/hook", "127.0.0.1", "10.1.2.3 is a private address"),
        ("http://localhost:9/hook", "", "localhost is a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "", "is a loopback address"),
        ("http://169.254.169.254/latest/meta-data", "10.0.0.0/8", "is a link-local address"),
        ("https://user:pw@hooks.example.com/", "", "must not carry a user name or password"),
    ],
)
async def test_callback_urls_that_cannot_be_called_are_refused_before_any_job_is_made(make_stack, url, allowed, problem) -> None:
    stack = await make_stack(workers=0, **WEBHOOKS | {"webhook_allowed_hosts": allowed})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await initiate(stack.stub, SMALL_IDS[:1], callback_url=url)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in refused.value.details()
    assert not (await stack.stub.ListDownloads(pb.ListDownloadsRequest())).jobs


async def test_a_callback_without_a_secret_to_sign_with_is_refused(make_stack) -> None:
    stack = await make_stack(workers=0, **WEBHOOKS | {"webhook_secret": ""})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await initiate(stack.stub, SMALL_IDS[:1], callback_url="http://127.0.0.1:9/hook")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "WEBHOOK_SECRET" in refused.value.details()


async def taken_over(
    stack, receiver: Receiver, work_dir, stop: Callable[[ManagedProcess], None]
) -> tuple[Delivery, Delivery, str]:
    """A job's delivery held by a first worker process until `stop` ends that process, then made by
    a second one: (the held delivery, the second worker's, the job id)."""
    processes: list[ManagedProcess] = []

    def start(name: str) -> ManagedProcess:
        env = stack.settings.replace(worker_name=name).to_env()
        processes.append(python_process(f"{stack.settings.redis_prefix}-{name}", "worker", env, work_dir / "logs"))
        return processes[-1]

    try:
        first = start("first")
        job = await initiate(stack.stub, SMALL_IDS[:1], callback_url=receiver.url)
        held = await receiver.next()  # the first worker is waiting for its answer
        await asyncio.to_thread(stop, first)
        receiver.release()
        start("second")
        return held, await receiver.next(timeout_s=15), job.job_id
    finally:
        for process in processes:
            process.stop()


async def test_a_worker_sigkilled_mid_delivery_loses_no_delivery(make_stack, receive, work_dir) -> None:
    # A short timeout makes a short lease: the delivery is due again 2 s after the kill.
    stack = await make_stack(workers=0, **WEBHOOKS | {"webhook_timeout_s": 1.0})
    held, again, job_id = await taken_over(stack, await receive(hold_first=True), work_dir, ManagedProcess.kill)
    assert again.webhook_id == held.webhook_id and again.answered == 200
    done = await webhook_settled(stack.stub, job_id)
    # The killed attempt was never recorded: the one that counts is the second worker's.
    assert (done.webhook.state, done.webhook.attempts) == (pb.WEBHOOK_STATE_DELIVERED, 1)


async def test_a_worker_stopped_mid_delivery_hands_it_to_another_at_once(make_stack, receive, work_dir) -> None:
    # A lease of a minute: only the hand-back lets the second worker deliver within the wait.
    stack = await make_stack(workers=0, **WEBHOOKS | {"webhook_timeout_s": 30.0})
    held, again, job_id = await taken_over(stack, await receive(hold_first=True), work_dir, ManagedProcess.stop)  # SIGTERM
    assert again.webhook_id == held.webhook_id and again.answered == 200
    assert (await webhook_settled(stack.stub, job_id)).webhook.state == pb.WEBHOOK_STATE_DELIVERED
