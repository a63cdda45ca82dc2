"""Validation of the operator API's requests; each rule names the field it is about."""

from __future__ import annotations

from typing import Any

from jobs.index_scan import JobFilter
from longhaul.admin.v1 import admin_pb2 as apb
from longhaul.download.v1 import download_pb2 as pb
from server.validation import InvalidRequest, job_id

# Jobs one bulk call retries or discards.
MAX_BULK = 1000
MAX_REASON_LEN = 500
MAX_RETRY_AFTER_S = 3600


def dead_letter_filter(message: apb.DeadLetterFilter) -> JobFilter:
    """The filter's times are when the jobs failed."""
    violations: list[tuple[str, str]] = []
    error_code = _error_code(message.error_code, "filter.error_code", violations)
    since, before = _times(message, "failed_after", "failed_before", violations)
    if violations:
        raise InvalidRequest(violations)
    return JobFilter(tenant=message.tenant, error_code=error_code, since_ms=since, before_ms=before)


def job_filter(message: apb.JobFilter) -> JobFilter:
    """The filter's times are when the jobs were created."""
    violations: list[tuple[str, str]] = []
    error_code = _error_code(message.error_code, "filter.error_code", violations)
    state = ""
    if message.state:
        name = pb.JobState.Name(message.state) if message.state in pb.JobState.values() else ""
        if not name:
            violations.append(("filter.state", f"unknown state {message.state}"))
        state = name.removeprefix("JOB_STATE_")
    if state == "EXPIRED":
        violations.append(("filter.state", "expired jobs have no record left to list"))
    since, before = _times(message, "created_after", "created_before", violations)
    if violations:
        raise InvalidRequest(violations)
    return JobFilter(tenant=message.tenant, state=state, error_code=error_code, since_ms=since, before_ms=before)


def _error_code(value: int, field: str, violations: list[tuple[str, str]]) -> str:
    if not value:
        return ""
    if value not in pb.JobErrorCode.values():
        violations.append((field, f"unknown error code {value}"))
        return ""
    return pb.JobErrorCode.Name(value).removeprefix("JOB_ERROR_CODE_")


def _times(message: Any, after_field: str, before_field: str, violations: list[tuple[str, str]]) -> tuple[int, int]:
    """(since, before) in ms, 0 where unset, from the message's two Timestamp fields."""
    since = getattr(message, after_field).ToMilliseconds() if message.HasField(after_field) else 0
    before = getattr(message, before_field).ToMilliseconds() if message.HasField(before_field) else 0
    if since < 0 or before < 0:
        field = after_field if since < 0 else before_field
        violations.append((f"filter.{field}", "times before 1970 match nothing; leave it unset"))
    elif since and before and since >= before:
        violations.append((f"filter.{before_field}", f"must be later than {after_field}"))
    return since, before


def bulk(request: Any) -> tuple[list[str], JobFilter]:
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
