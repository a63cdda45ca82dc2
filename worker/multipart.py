"""A write-only file object that streams what is written to it into an S3 multipart upload.

`zipfile.ZipFile` writes into it synchronously; the pipeline awaits `drain()` between writes, which
ships every full part. The SHA-256 is computed on the way.

Each part is filled in its own buffer, which is reused once its upload is done: about
`max_in_flight + 2` buffers whatever the archive size, and no copy of each part. A new buffer grows
as it fills, so a small archive holds only its bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from jobs import metrics

log = logging.getLogger(__name__)


class MultipartSink:
    def __init__(self, s3: Any, bucket: str, key: str, part_size: int, max_in_flight: int = 2) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._part = bytearray()  # being filled
        self._filled = 0
        self._full: list[bytearray] = []  # filled, waiting for drain() to ship them
        self._spare: list[bytearray] = []  # uploaded: reused for the next parts
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._next_part = 1
        self._failure: BaseException | None = None
        self._uploads: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._completed = False

    # -- the file-object side, called synchronously by zipfile ------------------------------------

    def write(self, data: bytes) -> int:
        self._sha256.update(data)
        self._size += len(data)
        view = memoryview(data)
        while view:
            taken = min(len(view), self._part_size - self._filled)
            # Overwrites a reused buffer in place; grows a new one (a slice past the end appends).
            self._part[self._filled : self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._filled == self._part_size:
                self._full.append(self._part)
                self._part = self._spare.pop() if self._spare else bytearray()
                self._filled = 0
        return len(data)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        """Nothing to do: parts ship in drain(). zipfile calls this."""

    # -- the async side -----------------------------------------------------------------------------

    async def start(self) -> None:
        reply = await self._s3.create_multipart_upload(
            Bucket=self._bucket, Key=self._key, ContentType="application/zip"
        )
        self._upload_id = reply["UploadId"]

    async def drain(self) -> None:
        """Ships every full part; waits only when `max_in_flight` parts are already uploading."""
        while self._full:
            await self._ship(self._full.pop(0))

    async def complete(self) -> tuple[int, str]:
        """Uploads the rest, completes the upload and returns (size in bytes, hex SHA-256)."""
        await self.drain()
        if self._filled or self._next_part == 1:
            await self._ship(self._part[: self._filled])
        await self._wait_for_uploads()
        parts = sorted(self._parts, key=lambda p: p["PartNumber"])
        await self._s3.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
        )
        self._completed = True
        return self._size, self._sha256.hexdigest()

    async def abort(self) -> None:
        """Drops the partial upload so no orphaned parts stay in S3. Safe to call at any point."""
        for task in self._uploads:
            task.cancel()
        await asyncio.gather(*self._uploads, return_exceptions=True)
        if self._upload_id is None or self._completed:
            return
        try:
            await self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
        except Exception:
            log.warning("could not abort multipart upload of %s", self._key, exc_info=True)

    async def _ship(self, body: bytearray) -> None:
        await self._slots.acquire()
        # A part that failed in the background fails the next write, not only the very end.
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        task = asyncio.create_task(self._upload_part(self._next_part, body))
        self._next_part += 1
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)

    async def _upload_part(self, number: int, body: bytearray) -> None:
        try:
            reply = await self._s3.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
            )
            self._parts.append({"PartNumber": number, "ETag": reply["ETag"]})
            metrics.UPLOADED_BYTES.inc(len(body))
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            self._slots.release()
            if len(body) == self._part_size:
                self._spare.append(body)  # botocore is done with it, retries included

    async def _wait_for_uploads(self) -> None:
        await asyncio.gather(*list(self._uploads))
        if self._failure is not None:
            raise self._failure
