"""DownloadService: each RPC validates its request, calls the job store, and converts the answer."""

from __future__ import annotations

import logging
import time
from typing import Any

from jobs.convert import Presigner, event_type, to_job
from jobs.settings import Settings
from jobs.storage import head_source, source_key
from jobs.store import JobStore
from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from server import validation
from server.callbacks import Callbacks
from server.caller import tenant
from server.errors import grpc_errors, status_for
from server.records import RecordCache, StoredRecords
from server.watch import WatchHub, follow

log = logging.getLogger(__name__)


class DownloadServicer(pb_grpc.DownloadServiceServicer):
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        records: RecordCache | StoredRecords,
        hub: WatchHub,
        presigner: Presigner,
        s3: Any,
        callbacks: Callbacks,
    ) -> None:
        self._settings = settings
        self._store = store
        self._records = records  # where GetStatus reads: the record cache, or Redis each time
        self._hub = hub
        self._presigner = presigner
        self._s3 = s3
        self._callbacks = callbacks

    @grpc_errors
    async def InitiateDownload(self, request: pb.InitiateDownloadRequest, context: Any) -> pb.InitiateDownloadResponse:
        file_ids, request_id, priority = validation.initiate(request)
        callback_url = self._callbacks.url_for(tenant(), request.callback_url)
        # The job reaches the queue through a worker's relay (worker/relay.py), not from here.
        fields, _ = await self._store.create(tenant(), file_ids, request_id, priority, callback_url)
        return pb.InitiateDownloadResponse(job=to_job(fields, self._presigner))

    @grpc_errors
    async def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.GetStatusResponse:
        return pb.GetStatusResponse(job=await self._records.job(validation.job_id(request.job_id), tenant()))

    @grpc_errors
    async def WatchProgress(self, request: pb.WatchProgressRequest, context: Any) -> Any:
        job_id = validation.job_id(request.job_id)
        after_seq = validation.after_seq(request.after_seq)
        started = False
        try:
            async for update in follow(self._store, self._hub, job_id, tenant(), after_seq, self._settings.heartbeat_s):
                message = pb.WatchProgressResponse(seq=update.seq)
                if update.fields is None:
                    message.type = pb.EVENT_TYPE_HEARTBEAT
                    message.event_time.FromMilliseconds(int(time.time() * 1000))
                else:
                    message.type = pb.EVENT_TYPE_SNAPSHOT if update.type == "SNAPSHOT" else event_type(update.fields)
                    message.job.CopyFrom(to_job(update.fields, self._presigner))
                    message.event_time.CopyFrom(message.job.update_time)
                # An idle stream waits for its next update for hours: it keeps no record meanwhile.
                del update
                started = True
                yield message
        except Exception as error:
            # Once events have flowed, a REST/SSE client cannot see the status that ends the call:
            # tell it in the stream first. (Before that, the status alone maps to the HTTP code.)
            if started:
                code, text, _ = status_for(error)
                message = pb.WatchProgressResponse(type=pb.EVENT_TYPE_ERROR)
                message.error.code, message.error.message = code.value[0], text
                message.event_time.FromMilliseconds(int(time.time() * 1000))
                yield message
            raise

    @grpc_errors
    async def CancelDownload(self, request: pb.CancelDownloadRequest, context: Any) -> pb.CancelDownloadResponse:
        fields = await self._store.cancel(validation.job_id(request.job_id), tenant())
        return pb.CancelDownloadResponse(job=to_job(fields, self._presigner))

    @grpc_errors
    async def RetryDownload(self, request: pb.RetryDownloadRequest, context: Any) -> pb.RetryDownloadResponse:
        job_id, request_id = validation.retry(request)
        fields = await self._store.retry(job_id, tenant(), request_id)
        return pb.RetryDownloadResponse(job=to_job(fields, self._presigner))

    @grpc_errors
    async def ListDownloads(self, request: pb.ListDownloadsRequest, context: Any) -> pb.ListDownloadsResponse:
        page_size, page_token = validation.page(request)
        jobs, next_token = await self._store.list(tenant(), page_size, page_token)
        return pb.ListDownloadsResponse(
            jobs=[to_job(fields, self._presigner) for fields in jobs], next_page_token=next_token
        )

    @grpc_errors
    async def CheckAvailability(
        self, request: pb.CheckAvailabilityRequest, context: Any
    ) -> pb.CheckAvailabilityResponse:
        file_id = validation.file_id(request.file_id)
        source = await head_source(self._s3, self._settings, file_id)
        return pb.CheckAvailabilityResponse(
            file_id=file_id,
            available=source is not None,
            object_key=source_key(self._settings, file_id),
            size_bytes=source.size if source else 0,
        )


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DownloadService"].full_name

