"""Worker peak memory: an archive of SMALL_MB against one of LARGE_MB, each built by a fresh worker
process, against throwaway Redis and SeaweedFS. Prints peak RSS (VmHWM) of both and the difference.

    .venv/bin/python -m bench.worker_memory [--large-mb 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from devstack.processes import free_port
from devstack.services import python_process, start_redis, start_seaweedfs
from jobs.connections import redis_client, s3_client_kwargs, s3_session
from jobs.model import F, Priority, State
from jobs.queue import JobQueue
from jobs.settings import Settings
from jobs.store import JobStore

CHUNK = 8 * 1024 * 1024


async def put_sized(s3, settings: Settings, file_id: int, size: int) -> None:
    """A source object of `size` random bytes, uploaded in parts so this script stays small too."""
    key = f"{settings.source_prefix}{file_id}.zip"
    upload = await s3.create_multipart_upload(Bucket=settings.source_bucket, Key=key)
    parts, number, left = [], 1, size
    block = os.urandom(CHUNK)
    while left > 0:
        body = block[: min(CHUNK, left)]
        reply = await s3.upload_part(
            Bucket=settings.source_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=body
        )
        parts.append({"PartNumber": number, "ETag": reply["ETag"]})
        number, left = number + 1, left - len(body)
    await s3.complete_multipart_upload(
        Bucket=settings.source_bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


async def run_job(settings: Settings, file_ids: list[int], log_dir: Path) -> tuple[int, float, int]:
    """(peak RSS kB of a fresh worker that ran the job, seconds, archive bytes)."""
    worker = python_process("bench-worker", "worker", settings.to_env(), log_dir)
    redis = redis_client(settings)
    store, queue = JobStore(redis, settings), JobQueue(settings)
    try:
        await asyncio.sleep(1.5)  # let the worker settle before its baseline matters
        fields, _ = await store.create(file_ids, "", Priority.NORMAL)
        started = time.monotonic()
        await queue.enqueue(fields[F.ID], Priority.NORMAL)
        while (record := await store.get(fields[F.ID]))[F.STATE] not in (State.COMPLETED, State.FAILED):
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        assert record[F.STATE] == State.COMPLETED, record
        size = json.loads(record[F.RESULT])["size_bytes"]
        return peak_rss_kb(worker.pid), elapsed, size
    finally:
        worker.stop()
        await queue.close()
        await redis.aclose()


async def main(small_mb: int, large_mb: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        redis_port, s3_port = free_port(), free_port(also_free=(10000,))
        redis = start_redis(redis_port, work / "redis", work / "logs")
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            s3_endpoint=f"http://127.0.0.1:{s3_port}",
            delay_min_ms=0,
            delay_max_ms=0,
            worker_concurrency=1,
        )
        s3proc = start_seaweedfs(
            work / "s3", work / "logs", s3_port, settings.s3_access_key_id, settings.s3_secret_access_key,
            [settings.source_bucket, settings.artifact_bucket],
        )
        try:
            async with s3_session().client("s3", **s3_client_kwargs(settings)) as s3:
                await put_sized(s3, settings, 90_000_001, small_mb * 1024 * 1024)
                per_file = 100 * 1024 * 1024
                large_ids = list(range(90_000_010, 90_000_010 + max(large_mb * 1024 * 1024 // per_file, 1)))
                for file_id in large_ids:
                    await put_sized(s3, settings, file_id, per_file)
            small = await run_job(settings, [90_000_001], work / "logs")
            large = await run_job(settings, large_ids, work / "logs")
        finally:
            s3proc.stop()
            redis.stop()
    print(f"{'archive':>12} {'seconds':>8} {'MB/s':>7} {'peak RSS MB':>12}")
    for (rss, secs, size) in (small, large):
        print(f"{size / 2**20:>10.0f}MB {secs:>8.2f} {size / 2**20 / secs:>7.1f} {rss / 1024:>12.1f}")
    print(f"peak RSS added by the larger archive: {(large[0] - small[0]) / 1024:.1f} MB "
          f"for {(large[2] - small[2]) / 2**20:.0f} MB more archive (target < 50 MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=int, default=10)
    parser.add_argument("--large-mb", type=int, default=600)
    args = parser.parse_args()
    asyncio.run(main(args.small_mb, args.large_mb))
    sys.exit(0)
