"""Delivers jobs' endings to their webhooks, beside the worker's jobs and never in their way: a
few deliveries at a time (WEBHOOK_CONCURRENCY), each bounded by WEBHOOK_TIMEOUT_S.

Which endings are due is a schedule in Redis (jobs/deliveries.py), filled by the script that ends a
job. A delivery is leased while it is tried, so a worker that dies mid-delivery leaves it due again
once its lease ends; a receiver may then get it twice, with the same `webhook-id`. Each attempt is
recorded on the job; a failed one is tried again after the next of WEBHOOK_RETRY_DELAYS_S, and
after the last of them the delivery gives up.

A callback may not reach an address this deployment keeps to itself (jobs/webhooks.py,
AddressRule): checked when the job is created, and again at each attempt against the addresses the
host name resolves to then, since a name can be pointed elsewhere after the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from google.protobuf.json_format import MessageToDict

from jobs import metrics
from jobs.convert import Presigner, to_job
from jobs.deliveries import Attempt, WebhookDeliveries
from jobs.model import F, WebhookState
from jobs.settings import Settings
from jobs.webhooks import AddressRule, TenantWebhooks, next_delay_s, sign, webhook_id

log = logging.getLogger(__name__)

USER_AGENT = "Longhaul-Webhooks/1"


class AddressRefused(Exception):
    """The callback's host is, or resolves to, an address the deployment does not call."""


class _NoSecret(Exception):
    def __init__(self) -> None:
        super().__init__("no secret to sign with: set WEBHOOK_SECRET, or give the tenant one (python -m server.apikeys webhook)")


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then keeps only the addresses the rule allows (aiohttp connects to what
    this returns, so the address checked is the address called)."""

    def __init__(self, rule: AddressRule, resolver: AbstractResolver | None = None) -> None:
        self._rule = rule
        self._resolver = resolver or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        allowed = [r for r in results if self._rule.refusal(host, ipaddress.ip_address(r["host"])) is None]
        if not allowed:
            raise AddressRefused(self._rule.refusal(host, ipaddress.ip_address(results[0]["host"])) or host)
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


class WebhookSender:
    def __init__(self, settings: Settings, deliveries: WebhookDeliveries) -> None:
        self._settings = settings
        self._deliveries = deliveries
        self._rule = AddressRule(settings.webhook_allowed_hosts)
        self._tenants = TenantWebhooks(settings.api_keys_file)
        self._presigner = Presigner(settings)
        self._delays = settings.webhook_delays_s
        # A slow attempt keeps its lease: another worker takes the delivery only once it surely ended.
        self._lease_ms = int(2 * settings.webhook_timeout_s * 1000)
        self._poll_s = min(1.0, *self._delays)
        self._inflight: dict[asyncio.Task[None], str] = {}  # delivery -> its job id
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A job ended here: its delivery is due now, not at the next look at the schedule."""
        self._wake.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._settings.webhook_timeout_s)
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._rule), limit=self._settings.webhook_concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT}) as session:
            try:
                while True:
                    self._wake.clear()  # before reading the schedule: a wake meanwhile reads it again
                    await self._take_due(session)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_s)
            finally:
                await self._hand_back()

    async def _hand_back(self) -> None:
        """Stops the deliveries under way and makes them due again at once, so that a worker that
        stops (a deploy) does not hold them for their lease. A receiver may then get one twice,
        with the same webhook-id, as after a crash."""
        unfinished = [job_id for task, job_id in self._inflight.items() if not task.done()]
        for task in self._inflight:
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        if unfinished:
            try:
                await asyncio.wait_for(self._deliveries.release(unfinished), 2.0)
            except Exception as error:  # noqa: BLE001 - Redis away: their leases end by themselves
                log.warning("webhooks: %d deliveries under way wait for their lease to end (%s)", len(unfinished), error)

    async def _take_due(self, session: aiohttp.ClientSession) -> None:
        free = self._settings.webhook_concurrency - len(self._inflight)
        if free <= 0:
            return
        try:
            job_ids = await self._deliveries.take_due(_now_ms(), free, self._lease_ms)
        except Exception as error:  # noqa: BLE001 - Redis away: the schedule waits for it
            log.warning("webhooks: cannot read the schedule (%s)", error)
            return
        for job_id in job_ids:
            task = asyncio.create_task(self._deliver(session, job_id))
            self._inflight[task] = job_id
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._wake.set()  # a slot is free
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("webhooks: a delivery failed unexpectedly; it is tried again when its lease ends", exc_info=error)

    async def _deliver(self, session: aiohttp.ClientSession, job_id: str) -> None:
        record = await self._deliveries.job(job_id)
        if record is None:
            return
        attempt, state, next_ms = await self._attempt(session, record)
        recorded = await self._deliveries.record(job_id, record[F.HOOK_SEQ], attempt, state, next_ms)
        outcome = {WebhookState.DELIVERED: "delivered", WebhookState.SENDING: "failed"}.get(state, "gave_up")
        metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()
        if state != WebhookState.DELIVERED:
            log.warning("webhook of job %s: %s (%s)", job_id, attempt.error, outcome)
        if not recorded:
            log.info("webhook of job %s: the ending it announced is no longer the job's", job_id)

    async def _attempt(
        self, session: aiohttp.ClientSession, record: Mapping[str, str]
    ) -> tuple[Attempt, WebhookState, int | None]:
        """One attempt: what happened, the delivery's state after it and when the next is due."""
        started = _now_ms()
        url = record[F.HOOK_URL]
        try:
            if problem := self._rule.url_problem(url):  # an address in the URL is not resolved
                raise AddressRefused(problem)
            secret = self._secret(record[F.TENANT])
            msg_id = webhook_id(record[F.ID], record[F.HOOK_SEQ])
            body = self._body(record)
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, msg_id, timestamp, body),
            }
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                status = response.status
            if 200 <= status < 300:
                return Attempt(started, status), WebhookState.DELIVERED, None
            error, http_status = f"HTTP {status}", status
        except AddressRefused as refused:
            return Attempt(started, 0, str(refused)), WebhookState.GAVE_UP, None
        except TimeoutError:
            error, http_status = f"no answer within {self._settings.webhook_timeout_s:g} s", 0
        except (aiohttp.ClientError, OSError, _NoSecret) as failure:
            error, http_status = str(failure) or type(failure).__name__, 0
        attempts = int(record.get(F.HOOK_ATTEMPTS) or 0) + 1
        delay_s = next_delay_s(self._delays, attempts)
        if delay_s is None:
            return Attempt(started, http_status, error), WebhookState.GAVE_UP, None
        return Attempt(started, http_status, error), WebhookState.SENDING, _now_ms() + int(delay_s * 1000)

    def _secret(self, tenant: str) -> str:
        own = self._tenants.get(tenant)
        secret = own.secret if own else self._settings.webhook_secret
        if not secret:
            raise _NoSecret()
        return secret

    def _body(self, record: Mapping[str, str]) -> bytes:
        """The Standard Webhooks payload: the event's type, when it happened, and the job as the REST
        API prints it (built at each attempt, so a completed job's URL is fresh)."""
        job = MessageToDict(to_job(record, self._presigner), always_print_fields_with_no_presence=True)
        ended = datetime.fromtimestamp(int(record.get(F.FINISHED_MS) or record[F.UPDATED_MS]) / 1000, UTC)
        payload: dict[str, Any] = {
            "type": f"download.{record[F.STATE].lower()}",
            "timestamp": ended.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": job,
        }
        return json.dumps(payload, separators=(",", ":")).encode()


def _now_ms() -> int:
    return int(time.time() * 1000)
