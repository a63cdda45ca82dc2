"""The asyncio client: every RPC of DownloadService, a watch that survives dropped streams, and a
resumable download of the finished archive."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable
from pathlib import Path
from typing import Any, cast

import grpc

from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from longhaul_client.download import fetch_to_file
from longhaul_client.errors import LonghaulError, Unavailable, from_rpc_error, job_error

DEFAULT_TARGET = "127.0.0.1:8080"  # Envoy, which also speaks native gRPC
# The states that end a run (only a retry takes a job out of one), as the contract marks them (the `terminal` option; Any: the
# generated stubs type the extension as a plain field).
TERMINAL_STATES = frozenset(
    v.number for v in pb.JobState.DESCRIPTOR.values if cast(Any, v.GetOptions()).Extensions[pb.terminal]
)
PRIORITIES = {"low": pb.PRIORITY_LOW, "normal": pb.PRIORITY_NORMAL, "high": pb.PRIORITY_HIGH}

# Unary calls that fail with UNAVAILABLE (a server restarting, a replica going away) are retried by
# gRPC itself, and so are those answered CANCELLED: gRPC's answer to a call that reaches a server as
# it begins to stop (grpc/grpc#41785). Every call here is safe to repeat: InitiateDownload and
# RetryDownload always carry a request id, and cancelling a cancelled job returns it.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "longhaul.download.v1.DownloadService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ]
    }
)

# A watch stream that ends with one of these is resumed: the server or a proxy went away
# (UNAVAILABLE), Envoy reset the stream of a server that died (INTERNAL "Stream removed"), or a
# proxy's stream limit ran out (DEADLINE_EXCEEDED; the client itself sets no deadline on watches), or
# a stopping server's grace period ran out before the stream's own status went (CANCELLED: a
# cancellation of ours raises asyncio.CancelledError instead).
_RESUMABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)

Event = pb.WatchProgressResponse


class AsyncClient:
    """A Longhaul client for asyncio code.

    `target` is host:port of Envoy (default) or of a server. `token` is sent as a bearer token.
    A watch reconnects by itself for up to `reconnect_for_s` seconds of continuous failure.
    With `trace_id` (32 hex digits), every call carries a W3C traceparent in that trace, so that the
    service's spans of this client's calls form one trace and its errors name it; leave it out when
    your application propagates its own trace context (OpenTelemetry's gRPC instrumentation).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout_s: float = 15.0,
        reconnect_for_s: float = 60.0,
        trace_id: str = "",
    ) -> None:
        options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1)]
        if tls or root_certificates:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = pb_grpc.DownloadServiceStub(self._channel)
        self._token = (("authorization", f"Bearer {token}"),) if token else ()
        self.trace_id = trace_id
        self._timeout_s = timeout_s
        self._reconnect_for_s = reconnect_for_s

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """Each call's: the bearer token, and a traceparent (a span of its own) when tracing."""
        if not self.trace_id:
            return self._token
        return (*self._token, ("traceparent", f"00-{self.trace_id}-{secrets.token_hex(8)}-01"))

    async def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    # -- the RPCs --------------------------------------------------------------------------------

    async def initiate(
        self, file_ids: Iterable[int], *, request_id: str | None = None, priority: str = "normal", callback_url: str = ""
    ) -> pb.Job:
        """Starts a download; with the same `request_id` (generated if not given) it returns the same job.
        `callback_url`: where the job's ending is POSTed, signed (README, "Webhooks")."""
        request = pb.InitiateDownloadRequest(
            file_ids=list(file_ids),
            request_id=request_id or str(uuid.uuid4()),
            priority=PRIORITIES[priority],
            callback_url=callback_url,
        )
        return (await self._call(self._stub.InitiateDownload, request)).job

    async def status(self, job_id: str) -> pb.Job:
        return (await self._call(self._stub.GetStatus, pb.GetStatusRequest(job_id=job_id))).job

    async def cancel(self, job_id: str) -> pb.Job:
        return (await self._call(self._stub.CancelDownload, pb.CancelDownloadRequest(job_id=job_id))).job

    async def retry(self, job_id: str, *, request_id: str | None = None) -> pb.Job:
        """Runs a FAILED or CANCELLED job again under the same id; with the same `request_id`
        (generated if not given) a repeat returns the job without retrying it twice."""
        request = pb.RetryDownloadRequest(job_id=job_id, request_id=request_id or str(uuid.uuid4()))
        return (await self._call(self._stub.RetryDownload, request)).job

    async def list(self, *, page_size: int = 100, limit: int | None = None) -> AsyncGenerator[pb.Job, None]:
        """Jobs, newest first, across pages."""
        token, seen = "", 0
        while True:
            request = pb.ListDownloadsRequest(page_size=page_size, page_token=token)
            reply = await self._call(self._stub.ListDownloads, request)
            for job in reply.jobs:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            token = reply.next_page_token
            if not token:
                return

    async def availability(self, file_id: int) -> pb.CheckAvailabilityResponse:
        return await self._call(self._stub.CheckAvailability, pb.CheckAvailabilityRequest(file_id=file_id))

    # -- watching --------------------------------------------------------------------------------

    async def watch(self, job_id: str, *, after_seq: int = 0, heartbeats: bool = False) -> AsyncGenerator[Event, None]:
        """The job's events until it ends: a SNAPSHOT first (unless resuming from `after_seq`), then
        each change. A dropped stream is resumed from the last seq seen, so callers never see a gap
        or a repeat. Heartbeats are yielded only if asked for."""
        last_seq = after_seq
        failing_since: float | None = None
        delay_s = 0.1
        while True:
            request = pb.WatchProgressRequest(job_id=job_id, after_seq=last_seq)
            call = self._stub.WatchProgress(request, metadata=self._metadata)
            try:
                async for event in call:
                    failing_since, delay_s = None, 0.1
                    if event.type == pb.EVENT_TYPE_HEARTBEAT:
                        if heartbeats:
                            yield event
                        continue
                    if event.type == pb.EVENT_TYPE_ERROR:
                        continue  # the call's status follows and says the same
                    if event.seq <= last_seq:
                        continue
                    last_seq = event.seq
                    yield event
                    if event.job.state in TERMINAL_STATES:
                        return
                return
            except grpc.aio.AioRpcError as error:
                if error.code() not in _RESUMABLE:
                    raise from_rpc_error(error) from None
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self._reconnect_for_s:
                    raise Unavailable(
                        f"lost the watch of job {job_id} and could not resume it for {self._reconnect_for_s:.0f} s "
                        f"({error.code().name}: {error.details()}); resume later from after_seq={last_seq}"
                    ) from None
                await asyncio.sleep(delay_s * random.uniform(0.5, 1.5))
                delay_s = min(delay_s * 2, 5.0)
            finally:
                call.cancel()

    async def wait(self, job_id: str, on_event: Callable[[Event], Any] | None = None) -> pb.Job:
        """Watches the job to its end; returns the COMPLETED job (with its result) or raises
        JobFailed / JobCancelled / JobExpired."""
        final: pb.Job | None = None
        async for event in self.watch(job_id):
            if on_event is not None:
                on_event(event)
            final = event.job
        if final is None or final.state not in TERMINAL_STATES:
            raise LonghaulError(f"the watch of job {job_id} ended before the job did")
        error = job_error(final)
        if error is not None:
            raise error
        return final

    # -- the file ----------------------------------------------------------------------------------

    async def download(
        self,
        job: pb.Job | str,
        path: str | Path,
        on_progress: Callable[[int, int], Any] | None = None,
    ) -> Path:
        """Fetches a completed job's archive to `path`, checking its SHA-256.

        Bytes already in `path + ".part"` (an interrupted earlier download) are kept and only the
        rest is fetched (HTTP Range). A URL that expired meanwhile is renewed with a fresh status.
        `on_progress(bytes_done, bytes_total)` is called as data arrives.
        """
        if isinstance(job, str):
            job = await self.status(job)
        error = job_error(job)
        if error is not None:
            raise error
        if job.state != pb.JOB_STATE_COMPLETED:
            raise LonghaulError(
                f"job {job.job_id} is not finished yet ({pb.JobState.Name(job.state)})", grpc.StatusCode.FAILED_PRECONDITION
            )

        async def fresh_url() -> str:
            return (await self.status(job.job_id)).result.download_url

        return await fetch_to_file(job.result, Path(path), fresh_url, on_progress)
