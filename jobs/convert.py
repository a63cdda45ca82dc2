"""Stored job records (and events, which have the same fields) to the contract's messages.

A completed job's download URL is presigned here. Presigning is a local HMAC computation (no request
reaches S3), but botocore spends about 0.9 ms of CPU on it, most of what a finished job's GetStatus
costs: a URL is handed out again while it has more than half its life left.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, cast

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from jobs.connections import botocore_session, s3_client_kwargs
from jobs.model import F
from jobs.settings import Settings
from jobs.storage import artifact_name, job_artifact_key
from jobs.webhooks import webhook_id
from longhaul.download.v1 import download_pb2 as pb

_EVENT_TYPES = {
    "SNAPSHOT": pb.EVENT_TYPE_SNAPSHOT,
    "STATE_CHANGED": pb.EVENT_TYPE_STATE_CHANGED,
    "PROGRESS": pb.EVENT_TYPE_PROGRESS,
}
_PRIORITIES = {"LOW": pb.PRIORITY_LOW, "NORMAL": pb.PRIORITY_NORMAL, "HIGH": pb.PRIORITY_HIGH}
# Looked up per conversion: a dict is several times cheaper than the enum wrapper's Value().
_STATES = {name.removeprefix("JOB_STATE_"): cast("pb.JobState", value) for name, value in pb.JobState.items()}
_PHASES = {name.removeprefix("JOB_PHASE_"): cast("pb.JobPhase", value) for name, value in pb.JobPhase.items()}
_WEBHOOK_STATES = {name.removeprefix("WEBHOOK_STATE_"): cast("pb.WebhookState", value) for name, value in pb.WebhookState.items()}
_ERROR_CODES = {name.removeprefix("JOB_ERROR_CODE_"): cast("pb.JobErrorCode", value) for name, value in pb.JobErrorCode.items()}
_TIMESTAMPS = (
    ("create_time", F.CREATED_MS),
    ("start_time", F.STARTED_MS),
    ("update_time", F.UPDATED_MS),
    ("finish_time", F.FINISHED_MS),
    ("expire_time", F.EXPIRE_MS),
    ("next_attempt_time", F.NEXT_ATTEMPT_MS),
)


class Presigner:
    """Signs GET URLs for artifacts, valid `presign_ttl_s` (never past the job's expiry), for the
    public S3 endpoint. Every URL handed out is valid for at least half of what a URL signed at that
    moment would be: a signed URL is reused until then (the last `capacity` artifacts' URLs are kept)."""

    def __init__(self, settings: Settings, capacity: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._ttl_ms = settings.presign_ttl_s * 1000
        self._bucket = settings.artifact_bucket
        self._deployment = settings.redis_prefix
        self._capacity = capacity
        self._clock = clock
        self._signed: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()
        kwargs = s3_client_kwargs(settings, endpoint=settings.presign_endpoint)
        # Any: botocore adds generate_presigned_url to clients at runtime, unknown to its stubs.
        self._client: Any = botocore_session().create_client("s3", **kwargs)

    def for_job(self, fields: Mapping[str, str]) -> tuple[str, int]:
        """The URL of a completed job's artifact (from its record or one of its events)."""
        key = job_artifact_key(self._deployment, fields)
        return self.url(key, artifact_name(fields[F.ID]), int(fields.get(F.EXPIRE_MS) or 0))

    def url(self, key: str, file_name: str, not_after_ms: int = 0) -> tuple[str, int]:
        """(URL, expiry in epoch ms). A fresh URL lives `presign_ttl_s`, but never past
        `not_after_ms` (the job's expiry, when its artifact is deleted)."""
        now = int(self._clock() * 1000)
        signed = self._signed.get((key, file_name))
        if signed is not None and self.reusable(signed[1], not_after_ms, now):
            return signed
        ttl_s = self._lifetime_ms(not_after_ms, now) // 1000
        url = self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self._bucket,
                "Key": key,
                "ResponseContentDisposition": f'attachment; filename="{file_name}"',
            },
            ExpiresIn=ttl_s,
        )
        self._signed[(key, file_name)] = signed = (url, now + ttl_s * 1000)
        self._signed.move_to_end((key, file_name))
        if len(self._signed) > self._capacity:
            self._signed.popitem(last=False)
        return signed

    def reusable(self, expires_ms: int, not_after_ms: int = 0, now_ms: int | None = None) -> bool:
        """Whether a URL expiring at `expires_ms` still has half the life of one signed now."""
        now = int(self._clock() * 1000) if now_ms is None else now_ms
        return expires_ms - now >= self._lifetime_ms(not_after_ms, now) / 2

    def _lifetime_ms(self, not_after_ms: int, now: int) -> int:
        if not not_after_ms:
            return self._ttl_ms
        return max(1000, min(self._ttl_ms, (not_after_ms - now) // 1000 * 1000))


def _timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def to_job(fields: Mapping[str, str], presigner: Presigner) -> pb.Job:
    job = pb.Job(
        job_id=fields.get(F.ID, ""),
        state=_STATES[fields[F.STATE]],
        phase=_PHASES[fields.get(F.PHASE, "QUEUED")],
        percent=float(fields.get(F.PERCENT, 0)),
        files_done=int(fields.get(F.FILES_DONE, 0)),
        files_total=int(fields.get(F.FILES_TOTAL, 0)),
        bytes_done=int(fields.get(F.BYTES_DONE, 0)),
        bytes_total=int(fields.get(F.BYTES_TOTAL, 0)),
        message=fields.get(F.MESSAGE, ""),
        attempts=int(fields.get(F.ATTEMPTS, 0)),
        retries=int(fields.get(F.RETRIES, 0)),
        worker=fields.get(F.WORKER, ""),
        priority=_PRIORITIES.get(fields.get(F.PRIORITY, ""), pb.PRIORITY_UNSPECIFIED),
        request_id=fields.get(F.REQUEST_ID, ""),
        seq=int(fields.get(F.SEQ, 0)),
    )
    for name, key in _TIMESTAMPS:
        if fields.get(key):
            getattr(job, name).FromMilliseconds(int(fields[key]))
    if fields.get(F.ETA_MS) and fields[F.STATE] in ("QUEUED", "RUNNING"):
        eta = Duration()
        eta.FromMilliseconds(int(fields[F.ETA_MS]))
        job.estimated_time_remaining.CopyFrom(eta)
    if fields.get(F.FILE_IDS):
        job.file_ids.extend(json.loads(fields[F.FILE_IDS]))
    if fields.get(F.RESULT):
        job.result.CopyFrom(_result(fields, presigner))
    if fields.get(F.ERROR):
        error = json.loads(fields[F.ERROR])
        code = _ERROR_CODES.get(error["code"], pb.JOB_ERROR_CODE_UNSPECIFIED)
        job.error.CopyFrom(pb.JobError(code=code, message=error["message"], retryable=error["retryable"]))
    if fields.get(F.HOOK_URL):
        job.webhook.CopyFrom(_webhook(fields))
    return job


def _webhook(fields: Mapping[str, str]) -> pb.Webhook:
    webhook = pb.Webhook(
        url=fields[F.HOOK_URL],
        state=_WEBHOOK_STATES[fields.get(F.HOOK_STATE, "WAITING")],
        attempts=int(fields.get(F.HOOK_ATTEMPTS, 0)),
    )
    if fields.get(F.HOOK_SEQ):
        webhook.webhook_id = webhook_id(fields[F.ID], fields[F.HOOK_SEQ])
    if fields.get(F.HOOK_NEXT_MS):
        webhook.next_attempt_time.FromMilliseconds(int(fields[F.HOOK_NEXT_MS]))
    for time_ms, http_status, error in json.loads(fields.get(F.HOOK_LOG) or "[]"):
        webhook.recent_attempts.add(time=_timestamp(time_ms), http_status=http_status, error=error)
    return webhook


def _result(fields: Mapping[str, str], presigner: Presigner) -> pb.DownloadResult:
    stored = json.loads(fields[F.RESULT])
    url, expires_ms = presigner.for_job(fields)
    files = [
        pb.FileOutcome(
            file_id=f["file_id"],
            status=cast("pb.FileStatus", pb.FileStatus.Value("FILE_STATUS_" + f["status"])),
            size_bytes=f["size_bytes"],
            entry_name=f["entry_name"],
        )
        for f in stored["files"]
    ]
    included = sum(1 for f in files if f.status == pb.FILE_STATUS_INCLUDED)
    return pb.DownloadResult(
        download_url=url,
        url_expire_time=_timestamp(expires_ms),
        size_bytes=stored["size_bytes"],
        sha256=stored["sha256"],
        file_name=artifact_name(fields[F.ID]),
        files=files,
        files_included=included,
        files_missing=len(files) - included,
    )


def event_type(fields: Mapping[str, str]) -> pb.EventType:
    return _EVENT_TYPES[fields.get(F.EVENT, "PROGRESS")]
