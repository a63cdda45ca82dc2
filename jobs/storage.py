"""The S3 layout: where source files are read from and where archives are written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from jobs import tenants
from jobs.model import F
from jobs.settings import Settings

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


@dataclass(frozen=True)
class SourceFile:
    file_id: int
    key: str
    size: int
    last_modified: datetime


def source_key(settings: Settings, file_id: int) -> str:
    return f"{settings.source_prefix}{file_id}.zip"


def artifact_name(job_id: str) -> str:
    return f"longhaul-{job_id}.zip"


def artifacts_root(deployment: str) -> str:
    """Where one deployment's artifacts live (`deployment` is its REDIS_PREFIX): several deployments
    can share a bucket, and the cleanup of each (worker/leftovers.py) never touches another's."""
    return f"{deployment}/tenants/"


def artifact_key(deployment: str, tenant_slug: str, job_id: str) -> str:
    """Fixed when the job is created, so a job that runs twice writes the same object. Under the
    tenant's own prefix (for per-tenant lifecycle rules and audits); unguessable through the job id
    (a random UUID), though the bucket serves nothing without a signature anyway."""
    return f"{artifacts_root(deployment)}{tenant_slug}/{job_id}/{artifact_name(job_id)}"


def job_artifact_key(deployment: str, record: Mapping[str, str]) -> str:
    """The artifact key of the job a record (or one of its events) is about: it is not stored, as it
    follows from the job (the scripts compute the same: jobs/scripts.py)."""
    return artifact_key(deployment, tenants.tenant_slug(record[F.TENANT]), record[F.ID])


def is_missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in _MISSING_CODES


async def head_source(s3: Any, settings: Settings, file_id: int) -> SourceFile | None:
    """The source file's metadata, or None when there is no such object."""
    key = source_key(settings, file_id)
    try:
        reply = await s3.head_object(Bucket=settings.source_bucket, Key=key)
    except ClientError as error:
        if is_missing(error):
            return None
        raise
    return SourceFile(file_id, key, reply["ContentLength"], reply["LastModified"])
