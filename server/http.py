"""The server's small plain-HTTP side, for what REST transcoding cannot express:

    GET /health                      200 {"status": "healthy", "checks": {...}}, 200 "degraded" (S3 is
                                     down: calls are served, jobs wait), or 503 "unhealthy" (Redis)
    GET /livez                       200 while the event loop answers, whatever Redis and S3 do: for a
                                     liveness probe (restarting a server does not bring Redis back)
    GET /queue-depth                 {"backlog": n, ...}: jobs not yet finished, by where they are, for
                                     autoscaling the workers (KEDA's metrics-api trigger); not routed
                                     by Envoy
    GET /metrics                     the server's Prometheus metrics (jobs/metrics.py, server/metrics.py),
                                     with the queue depth and workers alive read at scrape time; not
                                     routed by Envoy
    GET /v1/download/{job_id}/file   302 to a fresh presigned URL once COMPLETED, 409 with the state before
                                     (authenticated and rate limited like the gRPC API)
    GET / and its files              the browser page (clients/web, built by `make web` into dist/)
    GET /admin                       the operators' page (same build)

Envoy routes these paths here; everything else is gRPC (native, grpc-web, or transcoded REST).
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.json_format import MessageToDict

from jobs import metrics
from jobs.convert import Presigner
from jobs.model import F, State
from jobs.queue import JobQueue
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from server import validation
from server.auth import Authenticator
from server.errors import HTTP_STATUS, error_headers, error_status, request_id
from server.health import HealthMonitor
from server.ratelimit import RateLimiter

WEB_DIR = Path(__file__).resolve().parents[1] / "clients" / "web" / "dist"
# The page's files, and only these, are served: nothing else under the directory leaks.
WEB_FILES = ("index.html", "app.js", "app.js.map", "style.css", "admin.html", "admin.js", "admin.js.map")
# Addresses without a file name: the downloads page, and the operators' page.
WEB_PAGES = {"/": "index.html", "/admin": "admin.html"}


def _json(status: int, body: dict[str, Any], headers: Any = ()) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=dict(headers))


def _failure(error: Exception, headers: Any, request: web.Request | None = None) -> web.Response:
    """Whatever the gRPC side would answer for the same failure, as REST gets it through Envoy."""
    code, status = error_status(error, request_id(request.headers.items()) if request is not None else "")
    return _json(HTTP_STATUS[code], MessageToDict(status), (*headers, *error_headers(error)))


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Paths and methods nobody serves get the same JSON error shape as the REST API, not aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        message = f"no such path: {request.path!r}; the REST API lives under /v1/"
        return _json(404, {"code": grpc.StatusCode.NOT_FOUND.value[0], "message": message})
    except web.HTTPMethodNotAllowed as error:
        allowed = ", ".join(sorted(error.allowed_methods))
        message = f"{request.method} is not allowed on {request.path!r}; use {allowed}"
        return _json(405, {"code": grpc.StatusCode.UNIMPLEMENTED.value[0], "message": message}, {"allow": allowed})


class HttpSide:
    def __init__(
        self,
        store: JobStore,
        presigner: Presigner,
        health: HealthMonitor,
        authenticator: Authenticator,
        limiter: RateLimiter,
        queue: JobQueue,
        workers: WorkerRegistry,
    ) -> None:
        self._store = store
        self._queue = queue
        self._workers = workers
        self._presigner = presigner
        self._health = health
        self._authenticator = authenticator
        self._limiter = limiter
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, listen: str, ssl_context: ssl.SSLContext | None = None) -> int:
        app = web.Application(middlewares=[_json_errors])
        app.router.add_get("/health", self._health_check)
        app.router.add_get("/livez", self._alive)
        app.router.add_get("/queue-depth", self._queue_depth)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/download/{job_id}/file", self._file)
        for page in WEB_PAGES:
            app.router.add_get(page, self._page)
        for name in WEB_FILES:
            app.router.add_get(f"/{name}", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = listen.rsplit(":", 1)
        site = web.TCPSite(self._runner, host, int(port), ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.StreamResponse:
        path = WEB_DIR / WEB_PAGES.get(request.path, request.path.lstrip("/"))
        if not path.is_file():
            return web.Response(status=404, text="The web page is not built: run `make web` (make run does).\n")
        # The page is small and changes with each build: browsers revalidate it every time.
        return web.FileResponse(path, headers={"cache-control": "no-cache"})

    async def _queue_depth(self, request: web.Request) -> web.Response:
        # Jobs a relay has not enqueued yet are in the fresh list, not in bullmq: with no worker
        # running, that is where all of them wait, and a count of bullmq's keys alone would say 0.
        try:
            depth = await self._depth()
        except Exception as error:  # noqa: BLE001 - each is mapped in errors.status_for
            return _failure(error, ())
        return _json(200, {"backlog": sum(depth.values()), **depth})

    async def _depth(self) -> dict[str, int]:
        return {"fresh": await self._store.fresh_count(), **await self._queue.counts()}

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            depth, alive = await self._depth(), await self._workers.alive()
        except Exception:  # noqa: BLE001 - Redis away: no figures rather than stale ones
            metrics.QUEUE_JOBS.clear()
            metrics.WORKERS_ALIVE.set(float("nan"))
        else:
            for state, count in depth.items():
                metrics.QUEUE_JOBS.labels(state).set(count)
            metrics.WORKERS_ALIVE.set(alive)
        return await metrics.metrics_response(request)

    async def _alive(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "alive"})

    async def _health_check(self, request: web.Request) -> web.Response:
        health = self._health
        status = "unhealthy" if not health.healthy else "degraded" if health.degraded else "healthy"
        return _json(200 if health.healthy else 503, {"status": status, "checks": health.checks})

    async def _file(self, request: web.Request) -> web.Response:
        headers: Any = ()
        try:
            tenant = self._authenticator.tenant(request.headers.items())
            allowance = await self._limiter.hit(tenant)
            headers = allowance.headers if allowance else ()
            job_id = validation.job_id(request.match_info["job_id"])
            job = await self._store.get(job_id, tenant, with_file_ids=False)
        except Exception as error:  # noqa: BLE001 - each is mapped in errors.status_for
            return _failure(error, headers, request)
        if job[F.STATE] != State.COMPLETED:
            # 409 rather than FAILED_PRECONDITION's 400: the request is fine, the job is not there yet.
            return _json(
                409,
                {
                    "code": grpc.StatusCode.FAILED_PRECONDITION.value[0],
                    "message": f"job {job_id} is {job[F.STATE]}, not COMPLETED; there is no file yet",
                    "state": job[F.STATE],
                    "percent": float(job.get(F.PERCENT, 0)),
                },
                headers,
            )
        url, _ = self._presigner.for_job(job)
        raise web.HTTPFound(url, headers=dict(headers))
