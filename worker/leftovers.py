"""What can be left behind in the artifact bucket, and its removal, a bounded amount per pass:

- multipart uploads nobody will finish: their worker was SIGKILLed, or its abort failed while S3 was
  down. An upload older than any attempt can run (ATTEMPT_TIMEOUT_S, plus a housekeeping interval for
  the clocks of S3 and the worker) has no run left to finish it.
- artifacts no job owns: the record is gone and no deletion is scheduled (the Redis that held them
  lost its data). Objects outside our layout are never touched.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError
from redis.asyncio import Redis

from jobs.keys import Keys
from jobs.settings import Settings
from jobs.storage import artifact_key, artifacts_root

log = logging.getLogger(__name__)

_BATCH = 1_000  # one S3 listing page
_ARTIFACT = re.compile(r"[^/]+/tenants/([^/]+)/([0-9a-f-]{36})/[^/]+")  # jobs.storage.artifact_key


class LeftoverSweeper:
    def __init__(self, settings: Settings, redis: Redis, keys: Keys, s3: Any) -> None:
        self.settings = settings
        self._redis = redis
        self._keys = keys
        self._s3 = s3
        self._root = artifacts_root(settings.redis_prefix)

    async def abort_stale_uploads(self) -> int:
        """Aborts up to a page of uploads that no attempt can still be writing; returns how many."""
        s = self.settings
        cutoff = datetime.now(UTC) - timedelta(seconds=s.attempt_timeout_s + s.housekeeping_interval_s)
        reply = await self._s3.list_multipart_uploads(Bucket=s.artifact_bucket, Prefix=self._root, MaxUploads=_BATCH)
        stale = [upload for upload in reply.get("Uploads", []) if upload["Initiated"] < cutoff]
        for upload in stale:
            try:
                await self._s3.abort_multipart_upload(Bucket=s.artifact_bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "NoSuchUpload":  # aborted meanwhile
                    raise
        if stale:
            log.warning("aborted %d multipart uploads left open by runs that ended without them", len(stale))
        return len(stale)

    async def delete_orphans(self) -> int:
        """Looks at the next page of artifacts (each pass goes on where the last one stopped, and starts
        over after the last page) and deletes those no job owns; returns how many."""
        bucket, keys = self.settings.artifact_bucket, self._keys
        after = await self._redis.get(keys.orphan_scan) or ""
        reply = await self._s3.list_objects_v2(Bucket=bucket, Prefix=self._root, StartAfter=after, MaxKeys=_BATCH)
        listed = [item["Key"] for item in reply.get("Contents", [])]
        await self._redis.set(keys.orphan_scan, listed[-1] if reply.get("IsTruncated") else "")
        deployment = self.settings.redis_prefix
        ours = [
            (key, match[2])
            for key in listed
            if (match := _ARTIFACT.fullmatch(key)) and key == artifact_key(deployment, match[1], match[2])
        ]
        if not ours:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, job_id in ours:
                pipe.exists(keys.job(job_id))
                pipe.zscore(keys.sweep, key)
            replies = await pipe.execute()
        orphans = [
            key
            for (key, _), owned, scheduled in zip(ours, replies[::2], replies[1::2], strict=True)
            if not owned and scheduled is None
        ]
        if orphans:
            reply = await self._s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in orphans], "Quiet": True})
            log.warning(
                "deleted %d artifacts that no job owns (their records were lost)", len(orphans) - len(reply.get("Errors", []))
            )
        return len(orphans)
