"""Domain errors raised by the job store. The server maps each to a gRPC status in one place."""

from __future__ import annotations


class JobsError(Exception):
    """Base of every error the jobs package raises on purpose."""


class JobNotFound(JobsError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no download job {job_id!r}")
        self.job_id = job_id


class IdempotencyConflict(JobsError):
    def __init__(self, request_id: str, job_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was already used for a different set of file_ids "
            f"(job {job_id}); use a new request_id for a new download"
        )
        self.request_id = request_id
        self.job_id = job_id


class JobAlreadyFinished(JobsError):
    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id} already finished as {state}; there is nothing to cancel")
        self.job_id = job_id
        self.state = state


class JobNotRetryable(JobsError):
    """Only a FAILED or CANCELLED job can be run again; what to do instead depends on the state."""

    _INSTEAD = {
        "QUEUED": "it is waiting for a worker already; watch it with WatchProgress",
        "RUNNING": "it is running; watch it with WatchProgress, or cancel it first to start it over",
        "COMPLETED": "its download is ready; GetStatus gives a fresh download URL",
        "EXPIRED": "its retention has passed and its record is gone; start a new download with InitiateDownload",
    }

    def __init__(self, job_id: str, state: str) -> None:
        instead = self._INSTEAD.get(state, "only a FAILED or CANCELLED job can be retried")
        super().__init__(f"job {job_id} is {state} and cannot be retried: {instead}")
        self.job_id = job_id
        self.state = state


class IntakePaused(JobsError):
    """An operator has paused intake: no new work until they resume it."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the service is not taking new downloads for now (paused by its operators); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class QuotaExceeded(JobsError):
    def __init__(self, tenant: str, active: int) -> None:
        super().__init__(
            f"you have {active} downloads queued or running, the most allowed at once; "
            f"wait for one to finish or cancel one, then try again"
        )
        self.tenant = tenant
        self.active = active


class HistoryAhead(JobsError):
    def __init__(self, after_seq: int, latest_seq: int) -> None:
        super().__init__(
            f"after_seq {after_seq} is ahead of the job's latest event {latest_seq}; "
            f"pass the last seq you received, or 0 for a fresh watch"
        )


class RunSuperseded(JobsError):
    """The job's record no longer belongs to this run: it finished, was cancelled or taken over."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id}: this run no longer owns the job ({reason})")
        self.job_id = job_id
        self.reason = reason


class ReplicasUnavailable(JobsError):
    """Too few Redis replicas could confirm a create or cancel now (none connected, as just after a
    failover, or they did not confirm the last one in time): refused before anything was written."""

    def __init__(self, what: str, connected: int, wanted: int) -> None:
        super().__init__(
            f"{what}: fewer than {wanted} Redis replicas can confirm writes now ({connected} connected; a failover "
            f"may be under way), so nothing was written; retry shortly (with the same request_id for a create)"
        )


class NotReplicated(JobsError):
    """A create or cancel reached Redis's primary, but not enough replicas confirmed it in time: it
    would be lost if the primary failed now. Repeating the call is safe and confirms it."""

    def __init__(self, what: str, confirmed: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"{what} was written, but {confirmed} of {wanted} Redis replicas confirmed it within {timeout_ms} ms, "
            f"so a failover now could lose it; repeat the call (with the same request_id for a create) to confirm it"
        )
        self.confirmed = confirmed
