"""The download path end to end against real Redis and SeaweedFS: initiate, watch, fetch, check."""

from __future__ import annotations

import urllib.error

import grpc
import pytest

from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import LARGE_IDS, MISSING_IDS, SMALL_IDS
from tests.helpers import check_archive, fetch, initiate, wait_done, watch_all


async def test_initiate_returns_a_queued_job_at_once(stack) -> None:
    job = await initiate(stack.stub, SMALL_IDS[:2])
    assert job.state == pb.JOB_STATE_QUEUED
    assert job.phase == pb.JOB_PHASE_QUEUED
    assert list(job.file_ids) == SMALL_IDS[:2]
    assert job.files_total == 2
    assert job.create_time.seconds > 0
    assert job.seq == 1


async def test_full_path_initiate_watch_fetch(stack) -> None:
    job = await initiate(stack.stub, SMALL_IDS[:4])
    messages = await watch_all(stack.stub, job.job_id)

    assert messages[0].type == pb.EVENT_TYPE_SNAPSHOT
    seqs = [m.seq for m in messages]
    assert seqs == sorted(set(seqs)), "seq must strictly increase"
    done = messages[-1].job
    assert done.state == pb.JOB_STATE_COMPLETED
    assert messages[-1].type in (pb.EVENT_TYPE_STATE_CHANGED, pb.EVENT_TYPE_SNAPSHOT)
    phases = [m.job.phase for m in messages]
    assert pb.JOB_PHASE_PACKAGING in phases or messages[0].job.state == pb.JOB_STATE_COMPLETED
    assert done.percent == 100
    assert done.phase == pb.JOB_PHASE_DONE
    assert done.attempts == 1
    assert done.worker == "test-worker-1"
    assert done.start_time.ToMilliseconds() >= done.create_time.ToMilliseconds()
    assert done.finish_time.ToMilliseconds() >= done.start_time.ToMilliseconds()
    assert done.expire_time.ToMilliseconds() > done.finish_time.ToMilliseconds()
    assert done.result.file_name.endswith(".zip")
    assert done.result.files_included == 4 and done.result.files_missing == 0
    assert [f.status for f in done.result.files] == [pb.FILE_STATUS_INCLUDED] * 4
    check_archive(done, SMALL_IDS[:4])

    status = (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job
    assert status.state == pb.JOB_STATE_COMPLETED
    assert status.result.sha256 == done.result.sha256
    check_archive(status, SMALL_IDS[:4])


async def test_archive_spanning_several_multipart_parts(stack) -> None:
    job = await initiate(stack.stub, LARGE_IDS)
    done = await wait_done(stack.stub, job.job_id)
    assert done.result.size_bytes > 2 * stack.settings.upload_part_size
    assert done.bytes_total == done.bytes_done == sum(f.size_bytes for f in done.result.files)
    check_archive(done, LARGE_IDS)


async def test_presigned_url_is_fresh_at_each_read_and_short_lived(stack) -> None:
    job = await initiate(stack.stub, SMALL_IDS[:1])
    done = await wait_done(stack.stub, job.job_id)
    again = (await stack.stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id))).job
    ttl_ms = again.result.url_expire_time.ToMilliseconds() - again.update_time.ToMilliseconds()
    assert 0 < ttl_ms <= (stack.settings.presign_ttl_s + 60) * 1000
    assert again.result.download_url != "" and "X-Amz-Signature" in again.result.download_url
    assert done.result.sha256 == again.result.sha256


async def test_bucket_refuses_anonymous_and_tampered_reads(stack) -> None:
    done = await wait_done(stack.stub, (await initiate(stack.stub, SMALL_IDS[:1])).job_id)
    url = done.result.download_url
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        fetch(url.split("?", 1)[0])
    assert anonymous.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as tampered:
        fetch(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
    assert tampered.value.code == 403


async def test_missing_files_are_listed_not_dropped(stack) -> None:
    ids = [SMALL_IDS[0], MISSING_IDS[0], SMALL_IDS[1]]
    done = await wait_done(stack.stub, (await initiate(stack.stub, ids)).job_id)
    assert done.state == pb.JOB_STATE_COMPLETED
    outcomes = {f.file_id: f.status for f in done.result.files}
    assert outcomes == {
        SMALL_IDS[0]: pb.FILE_STATUS_INCLUDED,
        MISSING_IDS[0]: pb.FILE_STATUS_NOT_FOUND,
        SMALL_IDS[1]: pb.FILE_STATUS_INCLUDED,
    }
    assert [f.file_id for f in done.result.files] == ids, "outcomes keep the request order"
    assert done.result.files_missing == 1 and done.result.files_included == 2
    check_archive(done, [SMALL_IDS[0], SMALL_IDS[1]])


async def test_all_files_missing_is_a_clear_failure(stack) -> None:
    done = await wait_done(stack.stub, (await initiate(stack.stub, MISSING_IDS)).job_id)
    assert done.state == pb.JOB_STATE_FAILED
    assert done.error.code == pb.JOB_ERROR_CODE_ALL_FILES_MISSING
    assert "none of the 2 requested files exist" in done.error.message
    assert done.error.retryable is False
    assert not done.HasField("result")


async def test_unknown_job_is_not_found(stack) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    for call in (
        stack.stub.GetStatus(pb.GetStatusRequest(job_id=unknown)),
        stack.stub.CancelDownload(pb.CancelDownloadRequest(job_id=unknown)),
        watch_all(stack.stub, unknown),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert unknown in error.value.details()


async def test_check_availability(stack) -> None:
    found = await stack.stub.CheckAvailability(pb.CheckAvailabilityRequest(file_id=SMALL_IDS[0]))
    assert found.available and found.size_bytes > 0
    assert found.object_key == f"downloads/{SMALL_IDS[0]}.zip"
    missing = await stack.stub.CheckAvailability(pb.CheckAvailabilityRequest(file_id=MISSING_IDS[0]))
    assert not missing.available and missing.size_bytes == 0
    assert missing.object_key == f"downloads/{MISSING_IDS[0]}.zip"


async def test_list_downloads_newest_first_and_paged(stack) -> None:
    created = [(await initiate(stack.stub, [SMALL_IDS[i]])).job_id for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await stack.stub.ListDownloads(pb.ListDownloadsRequest(page_size=2, page_token=token))
        assert len(page.jobs) <= 2
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(created))


async def test_priority_is_recorded(stack) -> None:
    job = await initiate(stack.stub, SMALL_IDS[:1], priority=pb.PRIORITY_HIGH)
    assert job.priority == pb.PRIORITY_HIGH
    assert (await wait_done(stack.stub, job.job_id)).state == pb.JOB_STATE_COMPLETED
