"""One job's work: look the files up, stream them into one zip archive, upload it to S3.

fetching: HEAD every source object (missing ones are recorded, not dropped silently)
packaging: stream each found object into the zip, parts upload as they fill, paced to the job's
           simulated preparation time, progress at least once a second
uploading: finish the multipart upload; the result carries size, SHA-256 and per-file outcomes
"""

from __future__ import annotations

import asyncio
import json
import time
import zipfile
from dataclasses import asdict, dataclass, field
from typing import IO, Any, cast

from botocore.exceptions import ClientError

from jobs.model import ErrorCode, Phase
from jobs.settings import Settings
from jobs.storage import SourceFile, head_source, is_missing
from worker.multipart import MultipartSink
from worker.progress import Progress

_CHUNK_SIZE = 1024 * 1024
_LOOKUP_CONCURRENCY = 16
_TICK_S = 1.0


class PermanentJobError(Exception):
    """A failure that running the job again cannot fix."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class FileOutcome:
    file_id: int
    status: str  # INCLUDED | NOT_FOUND
    size_bytes: int = 0
    entry_name: str = ""


@dataclass
class ArchiveResult:
    """What a job's record keeps of its archive. The object's key and file name are not kept: both
    follow from the job (jobs.storage.artifact_key), and every byte counts in a record kept a day."""

    size_bytes: int
    sha256: str
    files: list[FileOutcome] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


async def build_archive(
    s3: Any, settings: Settings, job_id: str, key: str, file_ids: list[int], progress: Progress
) -> ArchiveResult:
    """Archives the files into the object `key` (the job's artifact key, fixed at its creation)."""
    sources = await _look_up(s3, settings, file_ids, progress)
    outcomes = {f: FileOutcome(f, "NOT_FOUND") for f in file_ids}
    found = [s for s in sources if s is not None]
    if not found:
        raise PermanentJobError(
            ErrorCode.ALL_FILES_MISSING, f"none of the {len(file_ids)} requested files exist, so there is nothing to download"
        )
    progress.files_total = len(found)
    progress.bytes_total = sum(s.size for s in found)
    progress.phase = Phase.PACKAGING
    missing = len(file_ids) - len(found)
    await progress.report(
        f"found {len(found)} of {len(file_ids)} files" + (f" ({missing} missing)" if missing else ""), force=True
    )

    sink = MultipartSink(s3, settings.artifact_bucket, key, settings.upload_part_size)
    await sink.start()
    try:
        # A write-only stream (zipfile writes, tells and flushes; it never reads, seeks or closes it).
        with zipfile.ZipFile(cast(IO[bytes], sink), "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for index, source in enumerate(found):
                entry = await _add_file(s3, settings, archive, sink, source, progress)
                if entry is not None:
                    outcomes[source.file_id] = FileOutcome(source.file_id, "INCLUDED", source.size, entry)
                progress.files_done = index + 1
                await progress.report(f"packaged file {index + 1} of {len(found)}")
                await _pace(progress, (index + 1) / len(found))
        progress.phase = Phase.UPLOADING
        await progress.report("finishing the upload", force=True)
        size, sha256 = await sink.complete()
    except BaseException:
        await asyncio.shield(sink.abort())
        raise
    if not any(o.status == "INCLUDED" for o in outcomes.values()):
        raise PermanentJobError(ErrorCode.ALL_FILES_MISSING, "every requested file disappeared while the job ran")
    return ArchiveResult(size, sha256, [outcomes[f] for f in file_ids])


async def _look_up(s3: Any, settings: Settings, file_ids: list[int], progress: Progress) -> list[SourceFile | None]:
    await progress.report(f"looking up {len(file_ids)} files", force=True)
    slots = asyncio.Semaphore(_LOOKUP_CONCURRENCY)

    async def one(file_id: int) -> SourceFile | None:
        async with slots:
            return await head_source(s3, settings, file_id)

    return list(await asyncio.gather(*(one(f) for f in file_ids)))


async def _add_file(
    s3: Any, settings: Settings, archive: zipfile.ZipFile, sink: MultipartSink, source: SourceFile, progress: Progress
) -> str | None:
    """Streams one object into the archive; returns its entry name, or None if it vanished."""
    try:
        reply = await s3.get_object(Bucket=settings.source_bucket, Key=source.key)
    except ClientError as error:
        if is_missing(error):
            return None
        raise
    name = f"{source.file_id}.zip"
    info = zipfile.ZipInfo(name, date_time=source.last_modified.timetuple()[:6])
    info.compress_type = zipfile.ZIP_STORED  # the sources are zip files already
    info.file_size = source.size  # lets zipfile choose zip64 for entries over 4 GiB
    body = reply["Body"]
    try:
        with archive.open(info, "w") as entry:
            async for chunk in body.iter_chunks(_CHUNK_SIZE):
                entry.write(chunk)
                progress.bytes_done += len(chunk)
                await sink.drain()
                await progress.report(f"packaging file {progress.files_done + 1} of {progress.files_total}")
    finally:
        body.close()
    return name


async def _pace(progress: Progress, fraction: float) -> None:
    """Waits until the paced clock reaches `fraction`, reporting at least once a second."""
    deadline = progress.started + progress.paced_s * fraction
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, _TICK_S))
        await progress.report(f"packaging: {progress.files_done} of {progress.files_total} files ready", force=True)
