"""Validation of the operator API's requests; each rule names the field it is about."""

from __future__ import annotations

from typing import Any

from jobs.dead_letters import DeadLetterFilter
from longhaul.admin.v1 import admin_pb2 as apb
from longhaul.download.v1 import download_pb2 as pb
from server.validation import InvalidRequest, job_id

# Jobs one bulk call retries or discards.
MAX_BULK = 1000
MAX_REASON_LEN = 500
MAX_RETRY_AFTER_S = 3600


def dead_letter_filter(message: apb.DeadLetterFilter, field: str = "filter") -> DeadLetterFilter:
    violations: list[tuple[str, str]] = []
    error_code = ""
    if message.error_code:
        name = pb.JobErrorCode.Name(message.error_code) if message.error_code in pb.JobErrorCode.values() else ""
        if not name:
            violations.append((f"{field}.error_code", f"unknown error code {message.error_code}"))
        error_code = name.removeprefix("JOB_ERROR_CODE_")
    after = message.failed_after.ToMilliseconds() if message.HasField("failed_after") else 0
    before = message.failed_before.ToMilliseconds() if message.HasField("failed_before") else 0
    if after < 0 or before < 0:
        violations.append((f"{field}.failed_after", "times before 1970 match nothing; leave it unset"))
    elif after and before and after >= before:
        violations.append((f"{field}.failed_before", "must be later than failed_after"))
    if violations:
        raise InvalidRequest(violations)
    return DeadLetterFilter(message.tenant, error_code, after, before)


def bulk(request: Any) -> tuple[list[str], DeadLetterFilter]:
    """(job ids, filter) of a RetryDeadLetters or DiscardDeadLetters request: the ids named, or else
    every dead letter the filter matches (an empty filter only with `all`)."""
    where = dead_letter_filter(request.filter)
    ids = list(request.job_ids)
    if ids and (not where.empty or request.all):
        raise InvalidRequest([("job_ids", "name jobs or give a filter (or all), not both")])
    if not ids and where.empty and not request.all:
        raise InvalidRequest([("filter", "give job_ids, a filter, or all: true for every dead letter")])
    if len(ids) > MAX_BULK:
        raise InvalidRequest([("job_ids", f"at most {MAX_BULK} a call, got {len(ids)}")])
    return [job_id(value, f"job_ids[{index}]") for index, value in enumerate(ids)], where


def pause(request: apb.PauseIntakeRequest, default_retry_after_s: int) -> tuple[str, int]:
    violations: list[tuple[str, str]] = []
    if len(request.reason) > MAX_REASON_LEN:
        violations.append(("reason", f"at most {MAX_REASON_LEN} characters, got {len(request.reason)}"))
    retry_after_s = default_retry_after_s
    if request.HasField("retry_after"):
        retry_after_s = request.retry_after.ToSeconds()
        if not 1 <= retry_after_s <= MAX_RETRY_AFTER_S:
            violations.append(("retry_after", f"must be from 1 s to {MAX_RETRY_AFTER_S} s, got {retry_after_s} s"))
    if violations:
        raise InvalidRequest(violations)
    return request.reason, retry_after_s
