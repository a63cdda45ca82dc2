"""Fetching a finished archive over its presigned URL: resumable (HTTP Range) and verified (SHA-256)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from longhaul.download.v1 import download_pb2 as pb
from longhaul_client.errors import DownloadError

_CHUNK = 1024 * 1024
_TRIES = 5


async def fetch_to_file(
    result: pb.DownloadResult,
    path: Path,
    fresh_url: Callable[[], Awaitable[str]],
    on_progress: Callable[[int, int], Any] | None = None,
) -> Path:
    """Downloads into `path.part`, continuing what is there, then checks the SHA-256 and renames."""
    part = path.with_name(path.name + ".part")
    total = result.size_bytes
    url = result.download_url
    restarted = False
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tries = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have > total:
                part.unlink()
                have = 0
            if have < total:
                try:
                    url = await _fetch(session, url, part, have, total, fresh_url, on_progress)
                except (TimeoutError, aiohttp.ClientError) as error:
                    tries += 1
                    if tries >= _TRIES:
                        raise DownloadError(f"could not download {result.file_name}: {error}; run again to resume") from None
                    await asyncio.sleep(0.5 * 2**tries)
                    continue
                if part.stat().st_size < total:
                    continue  # the connection ended early: resume from there
            if _sha256(part) == result.sha256:
                break
            part.unlink()
            if restarted:
                raise DownloadError(f"{result.file_name} does not match its SHA-256 even after a fresh download")
            restarted = True  # the kept bytes were not this archive's: start over once
    part.replace(path)
    return path


async def _fetch(
    session: aiohttp.ClientSession,
    url: str,
    part: Path,
    have: int,
    total: int,
    fresh_url: Callable[[], Awaitable[str]],
    on_progress: Callable[[int, int], Any] | None,
) -> str:
    """One GET from byte `have` on; returns the URL used (renewed if the old one had expired)."""
    for renewed in (False, True):
        headers = {"Range": f"bytes={have}-"} if have else {}
        async with session.get(url, headers=headers) as reply:
            if reply.status == 403 and not renewed:
                url = await fresh_url()  # the presigned URL expired: ask for a new one
                continue
            if reply.status == 200:
                have = 0  # the server sent the whole object
            elif reply.status != 206:
                body = (await reply.text())[:300]
                raise DownloadError(f"the download URL answered HTTP {reply.status}: {body}")
            with open(part, "ab" if have else "wb") as out:
                async for chunk in reply.content.iter_chunked(_CHUNK):
                    out.write(chunk)
                    have += len(chunk)
                    if on_progress is not None:
                        on_progress(have, total)
            return url
    raise DownloadError("the download URL was refused even after it was renewed")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while chunk := data.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
