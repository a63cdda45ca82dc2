"""Small helpers the tests share: watching a job to its end, fetching and checking an archive."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import urllib.request
import zipfile

import grpc

from devstack.seed import seed_content
from jobs.connections import s3_client_kwargs, s3_session
from jobs.settings import Settings
from jobs.storage import artifact_key, artifacts_root
from jobs.tenants import tenant_slug
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from longhaul_client import TERMINAL_STATES
from tests.credentials import TENANT


async def initiate(
    stub: pb_grpc.DownloadServiceStub, file_ids: list[int], metadata: tuple = (), **fields: object
) -> pb.Job:
    reply = await stub.InitiateDownload(pb.InitiateDownloadRequest(file_ids=file_ids, **fields), metadata=metadata)
    return reply.job


async def watch_all(
    stub: pb_grpc.DownloadServiceStub, job_id: str, after_seq: int = 0, timeout_s: float = 30, metadata: tuple = ()
) -> list[pb.WatchProgressResponse]:
    """Every message of one WatchProgress call, until the server ends the stream."""
    request = pb.WatchProgressRequest(job_id=job_id, after_seq=after_seq)
    call = stub.WatchProgress(request, timeout=timeout_s, metadata=metadata)
    return [message async for message in call]


async def follow_resuming(
    stub: pb_grpc.DownloadServiceStub, job_id: str, retryable: set[grpc.StatusCode]
) -> tuple[list[int], pb.Job, int]:
    """Watches a job to its end as a client should, resuming from the last seq after each drop:
    (the seqs seen, snapshot first; the final job; how many times it resumed)."""
    seqs: list[int] = []
    final = None
    resumed = -1
    while True:
        resumed += 1
        try:
            call = stub.WatchProgress(pb.WatchProgressRequest(job_id=job_id, after_seq=seqs[-1] if seqs else 0), timeout=60)
            async for message in call:
                # A heartbeat carries no change; an error event comes before the status that ends the stream.
                if message.type not in (pb.EVENT_TYPE_HEARTBEAT, pb.EVENT_TYPE_ERROR):
                    seqs.append(message.seq)
                    final = message.job
            return seqs, final, resumed
        except grpc.aio.AioRpcError as error:
            assert error.code() in retryable, error
            await asyncio.sleep(0.1)


async def wait_done(stub: pb_grpc.DownloadServiceStub, job_id: str, timeout_s: float = 30, metadata: tuple = ()) -> pb.Job:
    messages = await watch_all(stub, job_id, timeout_s=timeout_s, metadata=metadata)
    job = messages[-1].job
    assert job.state in TERMINAL_STATES, messages[-1]
    return job


async def wait_state(stub: pb_grpc.DownloadServiceStub, job_id: str, state: int, timeout_s: float = 10) -> pb.Job:
    """Until GetStatus says `state` (for changes no watch reports, like a finished job expiring)."""
    deadline = time.monotonic() + timeout_s
    while (job := (await stub.GetStatus(pb.GetStatusRequest(job_id=job_id))).job).state != state:
        assert time.monotonic() < deadline, f"still {pb.JobState.Name(job.state)}"
        await asyncio.sleep(0.05)
    return job


async def wait_running_on(stack, job_id: str, not_on: str = "", timeout_s: float = 20) -> pb.Job:
    """Until the job runs (a file done) on a worker other than `not_on`; returns it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job_id))).job
        if job.state == pb.JOB_STATE_RUNNING and job.worker and job.worker != not_on and job.files_done >= 1:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job never ran on a worker other than {not_on!r}: {job}")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return reply.read()


def check_archive(job: pb.Job, expected_ids: list[int]) -> zipfile.ZipFile:
    """Downloads the result and checks it holds exactly `expected_ids`, byte for byte, with the
    promised size and SHA-256."""
    assert job.state == pb.JOB_STATE_COMPLETED, job
    data = fetch(job.result.download_url)
    assert len(data) == job.result.size_bytes
    assert hashlib.sha256(data).hexdigest() == job.result.sha256
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == sorted(f"{i}.zip" for i in expected_ids)
    for file_id in expected_ids:
        assert archive.read(f"{file_id}.zip") == seed_content(file_id)
    return archive


async def open_uploads(settings: Settings, job_id: str = "", tenant: str = TENANT) -> list[str]:
    """The object keys of the multipart uploads still open in S3: the job's, or (no job) all of the
    settings' deployment."""
    prefix = artifact_key(settings.redis_prefix, tenant_slug(tenant), job_id) if job_id else artifacts_root(settings.redis_prefix)
    async with s3_session().client("s3", **s3_client_kwargs(settings)) as s3:
        reply = await s3.list_multipart_uploads(Bucket=settings.artifact_bucket, Prefix=prefix)
    return [upload["Key"] for upload in reply.get("Uploads", [])]


async def until_no_open_uploads(settings: Settings, job_id: str = "", timeout_s: float = 5, tenant: str = TENANT) -> None:
    deadline = time.monotonic() + timeout_s
    while left := await open_uploads(settings, job_id, tenant):
        assert time.monotonic() < deadline, f"multipart uploads left open: {left}"
        await asyncio.sleep(0.05)


class StoppedClock:
    """A wall clock that moves only when told: rate-limit windows without waiting for the next second."""

    def __init__(self) -> None:
        self.now = int(time.time()) + 0.5  # half a second left in the window: Retry-After rounds up to 1

    def __call__(self) -> float:
        return self.now

    def next_second(self) -> None:
        self.now += 1
