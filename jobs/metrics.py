"""The service's Prometheus metrics, one set per process (prometheus_client's default registry).

Each process counts what it does itself: servers count creates, cancels, refusals and watch streams;
workers count attempts, outcomes and uploaded bytes; whichever process changes a job's state counts
the change (the job store does it, so no caller can forget). Prometheus adds the processes up.
Gauges read from Redis at scrape time (queue depth, workers alive) are the same on every server:
aggregate them with max(), not sum().

No label takes unbounded values: states, error codes, event types and refusal reasons are enums;
job ids and tenants are never labels.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from jobs.model import ErrorCode, EventType, State

# No `_created` series beside every counter: half the scrape, and Prometheus does not need them.
disable_created_metrics()

# Jobs prepare in 10 s to minutes; small ones in under a second.
_JOB_SECONDS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600)
# From a few milliseconds (idle workers) to minutes (a backlog).
_WAIT_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

JOBS_CREATED = Counter("download_jobs_created", "Jobs created (a repeated request id creates none).")
JOBS_RETRIED = Counter("download_jobs_retried_on_request", "FAILED or CANCELLED jobs run again by RetryDownload.")
JOBS_FINISHED = Counter("download_jobs_finished", "Jobs that reached a final state, by that state.", ["state"])
JOB_DURATION = Histogram(
    "download_job_duration_seconds", "From creation to the final state, by that state.", ["state"], buckets=_JOB_SECONDS
)
JOB_QUEUE_WAIT = Histogram(
    "download_job_queue_wait_seconds",
    "From creation to the start of the first attempt (queued to running).",
    buckets=_WAIT_SECONDS,
)
JOBS_FAILED = Counter("download_job_failed", "Jobs that failed, by the error code they carry.", ["error_code"])
ATTEMPTS = Counter("download_job_attempts", "Attempts started: each time a worker takes a job.")
RETRIES = Counter("download_job_retries", "Attempts that failed and were scheduled again, by error code.", ["error_code"])
EVENTS_PUBLISHED = Counter("download_events_published", "Job events published to watchers, by type.", ["type"])
UPLOADED_BYTES = Counter("download_s3_uploaded_bytes", "Bytes of archives uploaded to S3.")
REFUSED = Counter(
    "download_requests_refused",
    "Calls refused by a limit: rate_limit (requests per second), active_jobs (jobs running at once) or "
    "intake_paused (an operator paused intake).",
    ["reason"],
)
WEBHOOK_ATTEMPTS = Counter(
    "download_webhook_attempts",
    "Attempts to deliver a job's ending to its webhook, by outcome: delivered (2xx), failed (to be tried "
    "again) or gave_up (the last attempt failed, or the URL's address is not allowed).",
    ["outcome"],
)
WATCH_STREAMS = Gauge("download_watch_streams", "WatchProgress streams open on this server (SSE included).")
QUEUE_JOBS = Gauge(
    "download_queue_jobs",
    "Jobs not yet finished, by where they wait: fresh (not yet in bullmq), waiting, prioritized, active, delayed.",
    ["state"],
)
WORKERS_ALIVE = Gauge("download_workers_alive", "Workers that reported to Redis within the last 15 s.")
DEPENDENCY_UP = Gauge("download_dependency_up", "1 while this server reaches the dependency (redis, s3), else 0.", ["dependency"])

REFUSAL_REASONS = ("rate_limit", "active_jobs", "intake_paused")

# Every known label value is there from the start, at 0, so that rate() and alerts see a series
# before its first event.
for _code in ErrorCode:
    JOBS_FAILED.labels(_code)
    RETRIES.labels(_code)
for _state in (State.COMPLETED, State.FAILED, State.CANCELLED):
    JOBS_FINISHED.labels(_state)
# Counted on every progress write: each type's child resolved once (labels() takes a lock and builds a key).
EVENTS_BY_TYPE = {_type: EVENTS_PUBLISHED.labels(_type) for _type in EventType}
for _reason in REFUSAL_REASONS:
    REFUSED.labels(_reason)


async def metrics_response(_: web.Request) -> web.Response:
    """The process's metrics in the Prometheus text format, for an aiohttp route."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve_metrics(listen: str) -> web.AppRunner:
    """Serves GET /metrics on `listen` (host:port) until the runner is cleaned up."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_response)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host or None, int(port)).start()
    return runner
