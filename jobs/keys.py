"""The Redis layout: every key and channel Longhaul uses is built here and nowhere else.

    {p}:job:{id}          hash    the job record (fields: jobs.model.F)
    {p}:job:{id}:events   list    the job's event history, oldest first: each event's JSON, seqs consecutive
    {p}:job:{id}:gone     string  tombstone kept after the record expires (value: the tenant), so the
                                  job reads EXPIRED to its owner
    {p}:t:{t}:jobs        zset    the tenant's jobs for listing, members "{created_ms:013d}:{id}" by lex
    {p}:tenants           set     the prefix of every tenant's keys (Keys.tenant): whose indexes an
                                  operator's listing across tenants merges
    {p}:t:{t}:active      set     the tenant's QUEUED and RUNNING job ids (the active-jobs quota)
    {p}:t:{t}:idem:{rid}  string  the tenant's idempotency key -> "{job_id} {fingerprint}"
    {p}:t:{t}:rate:{sec}  string  the tenant's requests in one second (the rate limit), expires
    {p}:live              zset    every job not yet finished, by when the reconciler next checks that the
                                  queue holds it (housekeeping.py)
    {p}:fresh             list    "{id} {priority}" of created jobs ("{id} {priority} {retries}" of retried ones),
                                  until a worker's relay enqueues them
    {p}:fresh:wake:{r}    list    one relay's own key: pushed to end its blocking pop when it stops
    {p}:sweep             zset    artifact object keys by the time they are to be deleted from S3
    {p}:dead              zset    the dead letters (FAILED jobs an operator has not retried or discarded),
                                  members "{failed_ms:013d}:{id}" by lex
    {p}:webhooks          zset    job ids whose ending is to be delivered to their webhook, by when the
                                  next attempt is due (worker/webhooks.py leases them with claim_due.lua)
    {p}:intake            string  while intake is paused: who paused it, why, since when (JSON; jobs/intake.py)
    {p}:stats:{minute}    hash    one minute of the queue's history (jobs/stats.py): jobs ended by state,
                                  "failed:{code}" counts, the depth sampled; kept STATS_KEEP_S
    {p}:call:{c}          string  one forget call that forgot a job, kept two minutes so that the call
                                  repeated after a lost reply answers the same (lua/forget.lua)
    {p}:chore:{name}      string  a lease: the one worker process doing that chore this interval
    {p}:orphans:after     string  where the scan for artifacts no job owns goes on (an object key)
    {p}:replication-probe string  a counter written before a WAIT that has no write of its own to cover
    {p}:events            channel every job event, "{id}\\n{json}", read by each server's watch hub
    {p}:cancel            channel job ids to cancel, read by every worker process
    {p}:q:{queue}:*       bullmq's own keys for the work queue

{t} is the tenant's slug (jobs.tenants.tenant_slug): no ":" in it, so no two tenants' keys meet.
A job record keeps its tenant's prefix (`tenant_key`, from Keys.tenant); the Lua scripts append the
suffixes below to it. They get these names, and the formats of entries and messages, from the
prelude jobs/scripts.py generates from this module: nothing about the layout is spelled twice.
"""

from __future__ import annotations

from dataclasses import dataclass

# After a tenant's prefix (Keys.tenant).
# A tenant's keys begin "{prefix}:t:{slug}"; the slug never holds a ":" (jobs/tenants.py).
TENANT_INFIX = ":t:"
INDEX_SUFFIX = ":jobs"
ACTIVE_SUFFIX = ":active"
IDEMPOTENCY_SUFFIX = ":idem:"
# A tenant index member, "{created_ms:013d}:{id}": the same format in Python (%) and Lua (string.format).
INDEX_MEMBER_FORMAT = "%013d:%s"
# "{id} {priority}[ {retries}]" in the fresh list, "{id} {fingerprint}" in an idempotency key,
# "{id}\n{json}" on the events channel.
FRESH_SEPARATOR = " "
IDEMPOTENCY_SEPARATOR = " "
CHANNEL_SEPARATOR = "\n"
# The queue's history: one bucket per minute (the minute's number since 1970), kept two hours; a
# bucket's failures are counted under this prefix and the error code.
MINUTE_MS = 60_000
STATS_KEEP_S = 2 * 3600
FAILED_PREFIX = "failed:"


@dataclass(frozen=True)
class Keys:
    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def tombstone(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:gone"

    def tenant(self, slug: str) -> str:
        """The prefix of one tenant's keys."""
        return f"{self.prefix}{TENANT_INFIX}{slug}"

    def index(self, slug: str) -> str:
        return self.tenant(slug) + INDEX_SUFFIX

    def active(self, slug: str) -> str:
        return self.tenant(slug) + ACTIVE_SUFFIX

    def idempotency(self, slug: str, request_id: str) -> str:
        return self.tenant(slug) + IDEMPOTENCY_SUFFIX + request_id

    def rate(self, slug: str, second: int) -> str:
        return f"{self.tenant(slug)}:rate:{second}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    @property
    def live(self) -> str:
        return f"{self.prefix}:live"

    @property
    def fresh(self) -> str:
        return f"{self.prefix}:fresh"

    def relay_wake(self, relay_id: str) -> str:
        return f"{self.prefix}:fresh:wake:{relay_id}"

    @property
    def workers(self) -> str:
        """Sorted set: worker name -> when it last reported (ms)."""
        return f"{self.prefix}:workers"

    @property
    def workers_running(self) -> str:
        """Hash: worker name -> the job ids it ran at its last report (JSON list)."""
        return f"{self.prefix}:workers:running"

    @property
    def sweep(self) -> str:
        return f"{self.prefix}:sweep"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def webhooks(self) -> str:
        return f"{self.prefix}:webhooks"

    @property
    def intake(self) -> str:
        return f"{self.prefix}:intake"

    def stats(self, minute: int) -> str:
        return f"{self.prefix}:stats:{minute}"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}:call:{call_id}"

    def chore(self, name: str) -> str:
        return f"{self.prefix}:chore:{name}"

    @property
    def orphan_scan(self) -> str:
        return f"{self.prefix}:orphans:after"

    @property
    def replication_probe(self) -> str:
        return f"{self.prefix}:replication-probe"

    @property
    def events_channel(self) -> str:
        return f"{self.prefix}:events"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    @property
    def queue_prefix(self) -> str:
        """bullmq's `prefix` option: its keys become `{p}:q:{queue}:...`."""
        return f"{self.prefix}:q"

    def queue_job(self, queue_name: str, job_id: str) -> str:
        """bullmq's hash for one queue entry (its entry id is our job id)."""
        return f"{self.queue_prefix}:{queue_name}:{job_id}"


def index_member(created_ms: int, job_id: str) -> str:
    """Zero-padded so lexicographic order is creation order (newest last)."""
    return INDEX_MEMBER_FORMAT % (created_ms, job_id)
