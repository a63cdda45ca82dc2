"""`python -m bench.noop_worker`: our worker process with a job that does no work (no S3), so a
benchmark measures what Longhaul adds around a job: claim, progress, result, queue bookkeeping."""

from __future__ import annotations

from typing import Any

import worker.runner
from worker.__main__ import main
from worker.pipeline import ArchiveResult
from worker.progress import Progress


async def build_nothing(
    s3: Any, settings: Any, job_id: str, key: str, file_ids: list[int], progress: Progress
) -> ArchiveResult:
    await progress.report("nothing to do", force=True)
    return ArchiveResult(size_bytes=0, sha256="")


if __name__ == "__main__":
    worker.runner.build_archive = build_nothing  # type: ignore[assignment]
    main()
