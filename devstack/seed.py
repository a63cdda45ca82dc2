"""Source objects for a development stack: `downloads/{file_id}.zip` for the first 100 multiples of 7
from 70000, each a real zip archive, sizes spread from 1 KB to a few MB. Deterministic: the same
id always gets the same bytes."""

from __future__ import annotations

import io
import random
import zipfile
from typing import Any

from jobs.settings import Settings
from jobs.storage import source_key

SEED_FILE_IDS = [70000 + 7 * i for i in range(100)]
_MIN_SIZE = 1024
_MAX_SIZE = 4 * 1024 * 1024


def seed_size(file_id: int) -> int:
    """Sizes grow geometrically over the ids, so there are many small files and a few big ones."""
    index = SEED_FILE_IDS.index(file_id) if file_id in SEED_FILE_IDS else 0
    return int(_MIN_SIZE * (_MAX_SIZE / _MIN_SIZE) ** (index / (len(SEED_FILE_IDS) - 1)))


def seed_content(file_id: int, size: int | None = None) -> bytes:
    """A zip archive holding one file of random (incompressible) bytes, about `size` long."""
    size = seed_size(file_id) if size is None else size
    payload = random.Random(file_id).randbytes(max(size - 200, 1))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        info = zipfile.ZipInfo(f"file-{file_id}.bin", date_time=(2025, 1, 1, 0, 0, 0))
        archive.writestr(info, payload)
    return buffer.getvalue()


async def seed_sources(s3: Any, settings: Settings, file_ids: list[int] | None = None) -> int:
    """Uploads the missing seed objects; returns how many were written."""
    written = 0
    for file_id in file_ids or SEED_FILE_IDS:
        key = source_key(settings, file_id)
        try:
            await s3.head_object(Bucket=settings.source_bucket, Key=key)
            continue
        except Exception:  # noqa: BLE001 - absent: write it
            pass
        await s3.put_object(Bucket=settings.source_bucket, Key=key, Body=seed_content(file_id))
        written += 1
    return written
