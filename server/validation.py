"""Request validation. Every rule names the field it is about, so a caller knows what to fix."""

from __future__ import annotations

import re
from typing import Protocol

from jobs.logs import bind
from jobs.model import MAX_FILE_ID, MAX_FILES_PER_JOB, MAX_REQUEST_ID_LEN, MIN_FILE_ID, Priority
from longhaul.download.v1 import download_pb2 as pb

_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]+")
_PAGE_TOKEN = re.compile(r"\d{13}:" + _JOB_ID.pattern)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_PRIORITIES = {
    pb.PRIORITY_UNSPECIFIED: Priority.NORMAL,
    pb.PRIORITY_LOW: Priority.LOW,
    pb.PRIORITY_NORMAL: Priority.NORMAL,
    pb.PRIORITY_HIGH: Priority.HIGH,
}


class InvalidRequest(Exception):
    """One or more fields are wrong; `violations` is a list of (field, description)."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = violations


def _shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def initiate(request: pb.InitiateDownloadRequest) -> tuple[list[int], str, Priority]:
    violations: list[tuple[str, str]] = []
    file_ids = list(request.file_ids)
    if not file_ids:
        violations.append(("file_ids", "give at least one file id"))
    elif len(file_ids) > MAX_FILES_PER_JOB:
        violations.append(("file_ids", f"at most {MAX_FILES_PER_JOB} file ids per download, got {len(file_ids)}"))
    else:
        seen: set[int] = set()
        for index, file_id in enumerate(file_ids):
            if not MIN_FILE_ID <= file_id <= MAX_FILE_ID:
                violations.append(
                    (f"file_ids[{index}]", f"{file_id} is out of range: file ids go from {MIN_FILE_ID} to {MAX_FILE_ID}")
                )
            elif file_id in seen:
                violations.append((f"file_ids[{index}]", f"{file_id} is listed twice; list each file once"))
            seen.add(file_id)
            if len(violations) >= 10:
                break
    violations += _request_id_violations(request.request_id)
    priority = _PRIORITIES.get(request.priority)
    if priority is None:
        violations.append(("priority", f"unknown priority {request.priority}"))
    if violations:
        raise InvalidRequest(violations)
    assert priority is not None
    return file_ids, request.request_id, priority


def _request_id_violations(request_id: str) -> list[tuple[str, str]]:
    if not request_id or (len(request_id) <= MAX_REQUEST_ID_LEN and _REQUEST_ID.fullmatch(request_id)):
        return []
    return [
        (
            "request_id",
            f"use up to {MAX_REQUEST_ID_LEN} letters, digits and . _ : - (a UUID is ideal), got {_shown(request_id)}",
        )
    ]


def retry(request: pb.RetryDownloadRequest) -> tuple[str, str]:
    """(job id, request id)."""
    violations = _request_id_violations(request.request_id)
    try:
        valid_job_id = job_id(request.job_id)
    except InvalidRequest as error:
        violations = error.violations + violations
    if violations:
        raise InvalidRequest(violations)
    return valid_job_id, request.request_id


def job_id(value: str, field: str = "job_id") -> str:
    """The call's job id, valid; it also labels the call's log lines from here on."""
    if not _JOB_ID.fullmatch(value):
        what = "is required" if not value else f"must be a job id as returned by InitiateDownload, got {_shown(value)}"
        raise InvalidRequest([(field, what)])
    bind(job_id=value)
    return value


def after_seq(value: int) -> int:
    if value < 0:
        raise InvalidRequest([("after_seq", f"must be 0 or the last seq received, got {value}")])
    return value


def file_id(value: int, field: str = "file_id") -> int:
    if not MIN_FILE_ID <= value <= MAX_FILE_ID:
        raise InvalidRequest([(field, f"{value} is out of range: file ids go from {MIN_FILE_ID} to {MAX_FILE_ID}")])
    return value


class _Paged(Protocol):
    page_size: int
    page_token: str


def page(request: _Paged) -> tuple[int, str]:
    violations: list[tuple[str, str]] = []
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        violations.append(("page_size", f"must be from 1 to {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"))
    if request.page_token and not _PAGE_TOKEN.fullmatch(request.page_token):
        violations.append(("page_token", "pass the next_page_token of a previous response unchanged"))
    if violations:
        raise InvalidRequest(violations)
    return request.page_size or DEFAULT_PAGE_SIZE, request.page_token


OPERATIONS_COLLECTION = "operations"
MAX_WAIT_S = 300.0
DEFAULT_WAIT_S = 30.0


def operation_name(value: str) -> str:
    """The job id inside an operation name `operations/{job_id}`."""
    prefix = OPERATIONS_COLLECTION + "/"
    if not value.startswith(prefix):
        what = "is required" if not value else f"must be operations/{{job_id}}, got {_shown(value)}"
        raise InvalidRequest([("name", what)])
    return job_id(value[len(prefix):], field="name")


def operations_collection(name: str, filter_: str) -> None:
    violations: list[tuple[str, str]] = []
    if name not in ("", OPERATIONS_COLLECTION):
        violations.append(("name", f"the only collection is {OPERATIONS_COLLECTION!r}, got {_shown(name)}"))
    if filter_:
        violations.append(("filter", "filters are not supported; leave it empty"))
    if violations:
        raise InvalidRequest(violations)


def wait_timeout(has_timeout: bool, seconds: float) -> float:
    """WaitOperation's wait: the one asked for, capped so proxies on the way do not cut the call."""
    if not has_timeout:
        return DEFAULT_WAIT_S
    if seconds < 0:
        raise InvalidRequest([("timeout", f"must not be negative, got {seconds} s")])
    return min(seconds, MAX_WAIT_S)
