"""The multipart sink against the real S3 server: what is written arrives byte for byte, whatever the
sizes of the writes, while its part buffers are reused."""

from __future__ import annotations

import hashlib
import os
import random
import uuid

from jobs.connections import s3_client_kwargs, s3_session
from jobs.settings import Settings
from worker.multipart import MultipartSink


async def test_every_byte_arrives_in_order_through_reused_part_buffers(settings: Settings) -> None:
    part_size = settings.upload_part_size
    data = os.urandom(9 * part_size + 12_345)  # ten parts through about four buffers
    write_sizes = random.Random(7)
    key = f"test/{uuid.uuid4()}.zip"
    async with s3_session().client("s3", **s3_client_kwargs(settings)) as s3:
        sink = MultipartSink(s3, settings.artifact_bucket, key, part_size)
        await sink.start()
        offset = 0
        while offset < len(data):
            # Writes smaller than a part, across part boundaries, and spanning several parts at once.
            size = write_sizes.choice([1, 1_000, 64 * 1024, 1024 * 1024, 3 * part_size])
            sink.write(memoryview(data)[offset : offset + size])
            offset += size
            await sink.drain()
        size, sha256 = await sink.complete()
        stored = await (await s3.get_object(Bucket=settings.artifact_bucket, Key=key))["Body"].read()
    assert (size, sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert stored == data


async def test_an_empty_archive_is_one_empty_part(settings: Settings) -> None:
    key = f"test/{uuid.uuid4()}.zip"
    async with s3_session().client("s3", **s3_client_kwargs(settings)) as s3:
        sink = MultipartSink(s3, settings.artifact_bucket, key, settings.upload_part_size)
        await sink.start()
        assert await sink.complete() == (0, hashlib.sha256(b"").hexdigest())
        assert await (await s3.get_object(Bucket=settings.artifact_bucket, Key=key))["Body"].read() == b""
