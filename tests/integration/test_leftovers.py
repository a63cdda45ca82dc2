"""What housekeeping removes from the artifact bucket (worker/leftovers.py), against real Redis and S3:
uploads no run will finish and artifacts no job owns, and nothing else."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from jobs.connections import redis_client, s3_client_kwargs, s3_session
from jobs.model import F
from jobs.settings import Settings
from jobs.storage import artifact_key
from jobs.store import JobStore
from tests.credentials import TENANT
from tests.helpers import open_uploads
from worker.leftovers import LeftoverSweeper


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[tuple[JobStore, object]]:
    redis = redis_client(settings)
    async with s3_session().client("s3", **s3_client_kwargs(settings)) as s3:
        yield JobStore(redis, settings), s3
    await redis.aclose()


def sweeper(store: JobStore, s3: object, **changes: object) -> LeftoverSweeper:
    settings = store.settings.replace(**changes)
    return LeftoverSweeper(settings, store.redis, store.keys, s3)


async def test_an_upload_older_than_any_attempt_is_aborted_and_a_younger_one_kept(parts) -> None:
    store, s3 = parts
    s = store.settings
    key = artifact_key(s.redis_prefix, "t", str(uuid.uuid4()))
    await s3.create_multipart_upload(Bucket=s.artifact_bucket, Key=key)

    # Younger than an attempt may run (the default 30 min): a run may still be writing it.
    assert await sweeper(store, s3).abort_stale_uploads() == 0
    assert await open_uploads(s) == [key]

    # Older than any attempt (0 s here, so as soon as S3's clock has moved on): nobody will finish it.
    stale = sweeper(store, s3, attempt_timeout_s=0, housekeeping_interval_s=0.001)
    deadline = time.monotonic() + 5
    while not await stale.abort_stale_uploads():
        assert time.monotonic() < deadline, "never seen as stale"
        await asyncio.sleep(0.1)
    assert await open_uploads(s) == []


async def test_only_artifacts_no_job_owns_are_deleted(parts) -> None:
    store, s3 = parts
    s = store.settings
    live, _ = await store.create(TENANT, [70000])
    forgotten, _ = await store.create(TENANT, [70000])
    await store.forget(forgotten[F.ID])  # its artifact is scheduled for deletion: the sweeper's, not ours
    lost_record = artifact_key(s.redis_prefix, "t", str(uuid.uuid4()))
    not_ours = f"{s.redis_prefix}/tenants/t/notes.txt"
    other_deployment = artifact_key(f"{s.redis_prefix}-other", "t", str(uuid.uuid4()))
    keys = [store.artifact_key(live), store.artifact_key(forgotten), lost_record, not_ours, other_deployment]
    for key in keys:
        await s3.put_object(Bucket=s.artifact_bucket, Key=key, Body=b"zip")

    assert await sweeper(store, s3).delete_orphans() == 1
    reply = await s3.list_objects_v2(Bucket=s.artifact_bucket, Prefix=s.redis_prefix)
    assert {o["Key"] for o in reply["Contents"]} == set(keys) - {lost_record}
    for key in set(keys) - {lost_record}:
        await s3.delete_object(Bucket=s.artifact_bucket, Key=key)


async def test_the_orphan_scan_goes_on_where_it_stopped(parts, monkeypatch) -> None:
    store, s3 = parts
    s = store.settings
    monkeypatch.setattr("worker.leftovers._BATCH", 2)
    lost = sorted(artifact_key(s.redis_prefix, "t", str(uuid.uuid4())) for _ in range(3))
    for key in lost:
        await s3.put_object(Bucket=s.artifact_bucket, Key=key, Body=b"zip")
    scan = sweeper(store, s3)
    assert [await scan.delete_orphans() for _ in range(3)] == [2, 1, 0]
    assert await store.redis.get(store.keys.orphan_scan) == "", "after the last page it starts over"
