"""The job's vocabulary: states, phases, event types, error codes and the fields of the stored record.

Values are stored as the proto enum names without their prefix (state "QUEUED" is
JOB_STATE_QUEUED), so Redis stays readable and the server maps them to the contract one to one
(tests/unit/test_vocabulary.py holds each enum here to its proto enum).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, cast

from longhaul.download.v1 import download_pb2 as pb


class State(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


# The contract marks them (the `terminal` option on JobState's values; Any: the generated stubs type
# the extension as a plain field).
TERMINAL_STATES = frozenset(
    State(v.name.removeprefix("JOB_STATE_"))
    for v in pb.JobState.DESCRIPTOR.values
    if cast(Any, v.GetOptions()).Extensions[pb.terminal]
)


class Phase(StrEnum):
    QUEUED = "QUEUED"
    FETCHING = "FETCHING"
    PACKAGING = "PACKAGING"
    UPLOADING = "UPLOADING"
    DONE = "DONE"


class EventType(StrEnum):
    SNAPSHOT = "SNAPSHOT"
    STATE_CHANGED = "STATE_CHANGED"
    PROGRESS = "PROGRESS"


class ErrorCode(StrEnum):
    """Why a job failed: the contract's JobErrorCode, documented there."""

    ALL_FILES_MISSING = "ALL_FILES_MISSING"
    TOO_MANY_ATTEMPTS = "TOO_MANY_ATTEMPTS"
    ATTEMPT_TIMEOUT = "ATTEMPT_TIMEOUT"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    JOB_STORE_UNAVAILABLE = "JOB_STORE_UNAVAILABLE"
    INTERNAL = "INTERNAL"


class WebhookState(StrEnum):
    WAITING = "WAITING"
    SENDING = "SENDING"
    DELIVERED = "DELIVERED"
    GAVE_UP = "GAVE_UP"


class Priority(StrEnum):
    LOW = "LOW"
    NORMAL = "NORMAL"
    HIGH = "HIGH"


# bullmq runs lower numbers first; every job gets one so priorities order the whole queue.
QUEUE_PRIORITY = {Priority.HIGH: 1, Priority.NORMAL: 5, Priority.LOW: 10}


class F:
    """Field names of the job record hash (and of the JSON events built from it)."""

    ID = "id"
    STATE = "state"
    PHASE = "phase"
    PERCENT = "pct"
    FILES_DONE = "files_done"
    FILES_TOTAL = "files_total"
    BYTES_DONE = "bytes_done"
    BYTES_TOTAL = "bytes_total"
    MESSAGE = "msg"
    ATTEMPTS = "attempts"
    CREATED_MS = "created_ms"
    STARTED_MS = "started_ms"
    UPDATED_MS = "updated_ms"
    FINISHED_MS = "finished_ms"
    EXPIRE_MS = "expire_ms"
    ETA_MS = "eta_ms"
    NEXT_ATTEMPT_MS = "next_attempt_ms"
    WORKER = "worker"
    FILE_IDS = "file_ids"  # JSON list; left out of events
    TRACEPARENT = "traceparent"  # W3C trace context of the call that created the job (tracing on only)
    PRIORITY = "priority"
    REQUEST_ID = "request_id"
    TENANT = "tenant"  # who created the job and alone may see it
    TENANT_KEY = "tenant_key"  # prefix of the tenant's Redis keys (jobs.keys.Keys.tenant)
    RESULT = "result"  # JSON, see worker.pipeline.ArchiveResult.to_json
    ERROR = "error"  # JSON {"code", "message", "retryable"}
    SEQ = "seq"
    RETRIES = "retries"  # how many times RetryDownload ran the job again; absent until then
    RETRY_ID = "retry_id"  # the request_id of the last retry, so its repeat is answered (lua/retry.lua); left out of events
    TOKEN = "token"  # the running attempt's fencing token; left out of events
    CALL = "call"  # the last change's call id, so its repeat is answered, not applied (transition.lua); left out of events
    EVENT = "ev"  # only in events: the EventType
    # The job's webhook (absent without one); left out of events, which are about the job itself.
    HOOK_URL = "hook_url"
    HOOK_STATE = "hook_state"  # a WebhookState
    HOOK_SEQ = "hook_seq"  # the seq of the ending being delivered: its webhook-id
    HOOK_ATTEMPTS = "hook_attempts"
    HOOK_LOG = "hook_log"  # JSON: the latest attempts, [[time_ms, http_status, error], ...]
    HOOK_NEXT_MS = "hook_next_ms"  # when the next attempt is due


HOOK_FIELDS = frozenset({F.HOOK_URL, F.HOOK_STATE, F.HOOK_SEQ, F.HOOK_ATTEMPTS, F.HOOK_LOG, F.HOOK_NEXT_MS})


# Record fields no reader outside the store sees.
UNREAD_FIELDS = frozenset({F.TOKEN, F.CALL, F.TRACEPARENT, F.RETRY_ID})
# Record fields left out of events: the file ids and the webhook are part of a Job, not of its progress.
PRIVATE_FIELDS = UNREAD_FIELDS | {F.FILE_IDS} | HOOK_FIELDS


# Limits of InitiateDownload, from the original HTTP service.
MIN_FILE_ID = 10_000
MAX_FILE_ID = 100_000_000
MAX_FILES_PER_JOB = 1_000
MAX_REQUEST_ID_LEN = 128
