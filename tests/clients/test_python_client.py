"""The Python client library against the real stack (in-process server and worker on the session's
Redis and SeaweedFS): waits, errors, resumable downloads, a watch that survives a server restart."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
import zipfile

import grpc
import pytest

from longhaul.download.v1 import download_pb2 as pb
from longhaul_client import AsyncClient, Client, FailedPrecondition, InvalidArgument, JobFailed, LonghaulError, NotFound
from server.app import LonghaulServer
from tests.conftest import LARGE_IDS, MISSING_IDS, SMALL_IDS
from tests.credentials import TOKEN
from tests.helpers import fetch


@pytest.fixture
async def client(stack):
    async with AsyncClient(stack.address, token=TOKEN) as client:
        yield client


async def test_initiate_wait_and_download(client, tmp_path) -> None:
    job = await client.initiate(SMALL_IDS[:3])
    events = []
    done = await client.wait(job.job_id, on_event=events.append)
    assert done.state == pb.JOB_STATE_COMPLETED
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "every event once, in order"
    progress = []
    path = await client.download(done, tmp_path / "out.zip", on_progress=lambda d, t: progress.append((d, t)))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == done.result.sha256
    assert sorted(zipfile.ZipFile(path).namelist()) == sorted(f"{i}.zip" for i in SMALL_IDS[:3])
    assert progress[-1] == (done.result.size_bytes, done.result.size_bytes)
    assert not (tmp_path / "out.zip.part").exists()


async def test_the_same_request_id_gives_the_same_job_and_list_finds_it(client) -> None:
    first = await client.initiate(SMALL_IDS[:1], request_id="invoice-7")
    again = await client.initiate(SMALL_IDS[:1], request_id="invoice-7")
    assert again.job_id == first.job_id
    assert [j.job_id async for j in client.list(page_size=1)] == [first.job_id]


class _CancelsFirstThenForwards(grpc.GenericRpcHandler):
    """The first call meets a server that has begun to stop: gRPC answers it CANCELLED before any
    handler runs (grpc/grpc#41785). Later calls go through to the real server."""

    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self.upstream = upstream
        self.calls = 0

    def service(self, handler_call_details):
        forward = self.upstream.unary_unary(handler_call_details.method)

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls += 1
            if self.calls == 1:
                await context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
            metadata = [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]
            return await forward(request, metadata=metadata)

        return grpc.unary_unary_rpc_method_handler(handle)


async def test_a_call_a_stopping_server_answered_cancelled_is_retried(stack) -> None:
    async with grpc.aio.insecure_channel(stack.address) as upstream:
        stopping = _CancelsFirstThenForwards(upstream)
        front = grpc.aio.server()
        front.add_generic_rpc_handlers([stopping])
        port = front.add_insecure_port("127.0.0.1:0")
        await front.start()
        try:
            async with AsyncClient(f"127.0.0.1:{port}", token=TOKEN) as client:
                job = await client.initiate(SMALL_IDS[:1], request_id="roll-1")
                assert (await client.status(job.job_id)).job_id == job.job_id
            assert stopping.calls == 3, "the cancelled InitiateDownload was sent again, once"
        finally:
            await front.stop(None)


async def test_a_failed_job_raises_job_failed_with_its_reason(client) -> None:
    job = await client.initiate(MISSING_IDS)
    with pytest.raises(JobFailed) as failed:
        await client.wait(job.job_id)
    assert isinstance(failed.value, LonghaulError) and failed.value.code == grpc.StatusCode.ABORTED
    assert failed.value.job.error.code == pb.JOB_ERROR_CODE_ALL_FILES_MISSING
    assert "ALL_FILES_MISSING" in str(failed.value)


async def test_a_failed_job_runs_again_under_its_id_when_retried(client) -> None:
    job = await client.initiate(MISSING_IDS)
    with pytest.raises(JobFailed):
        await client.wait(job.job_id)
    retried = await client.retry(job.job_id, request_id="again-1")
    assert (retried.job_id, retried.state, retried.retries) == (job.job_id, pb.JOB_STATE_QUEUED, 1)
    assert (await client.retry(job.job_id, request_id="again-1")).retries == 1, "a repeat retries once"
    with pytest.raises(JobFailed):  # its files are still missing
        await client.wait(job.job_id)
    done = await client.status(job.job_id)
    assert (done.attempts, done.retries) == (1, 1)
    with pytest.raises(FailedPrecondition):
        await client.retry((await client.wait((await client.initiate(SMALL_IDS[:1])).job_id)).job_id)


async def test_rpc_errors_are_typed_and_carry_the_bad_fields(client) -> None:
    with pytest.raises(InvalidArgument) as invalid:
        await client.initiate([1])
    assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.field_violations and invalid.value.field_violations[0][0].startswith("file_ids")
    with pytest.raises(NotFound):
        await client.status(str(uuid.uuid4()))
    with pytest.raises(NotFound):
        [e async for e in client.watch(str(uuid.uuid4()))]


async def test_a_download_resumes_from_a_partial_file(client, tmp_path) -> None:
    done = await client.wait((await client.initiate(LARGE_IDS)).job_id)
    data = fetch(done.result.download_url)
    half = len(data) // 2
    (tmp_path / "out.zip.part").write_bytes(data[:half])
    progress = []
    path = await client.download(done.job_id, tmp_path / "out.zip", on_progress=lambda d, t: progress.append(d))
    assert path.read_bytes() == data
    assert progress[0] > half, "only the missing bytes were fetched (HTTP Range)"

    # Bytes that are not this archive's (another file under the same name) are thrown away.
    (tmp_path / "other.zip.part").write_bytes(b"x" * half)
    path = await client.download(done, tmp_path / "other.zip")
    assert path.read_bytes() == data


async def test_the_blocking_client_does_the_same(stack, tmp_path) -> None:
    def use_it() -> tuple[pb.Job, bytes]:
        with Client(stack.address, token=TOKEN) as client:
            job = client.initiate(SMALL_IDS[:2])
            states = [e.job.state for e in client.watch(job.job_id)]
            assert states[-1] == pb.JOB_STATE_COMPLETED
            done = client.wait(job.job_id)
            assert done.job_id in [j.job_id for j in client.list()]
            return done, client.download(done, tmp_path / "sync.zip").read_bytes()

    done, data = await asyncio.to_thread(use_it)
    assert hashlib.sha256(data).hexdigest() == done.result.sha256


async def test_a_watch_survives_a_server_restart_without_gap_or_repeat(make_stack) -> None:
    stack = await make_stack(delay_min_ms=3_000, delay_max_ms=3_000)
    port = stack.server.port
    async with AsyncClient(stack.address, token=TOKEN, reconnect_for_s=30) as client:
        job = await client.initiate(SMALL_IDS[:4])
        events = []
        restarted = None
        async for event in client.watch(job.job_id):
            events.append(event)
            if restarted is None and event.job.files_done >= 1:
                # The server goes away mid-watch (its streams end UNAVAILABLE) and comes back.
                await stack.server.stop()
                settings = stack.settings.replace(grpc_listen=f"127.0.0.1:{port}", http_listen="127.0.0.1:0")
                restarted = LonghaulServer(settings)
                await restarted.start()
        await restarted.stop()
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
    assert events[-1].job.state == pb.JOB_STATE_COMPLETED
