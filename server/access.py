"""The door of every RPC but health and reflection: who is calling (auth.py), and within their rate.

It runs in the server, so direct gRPC, grpc-web and REST through Envoy are all covered alike. The
caller's tenant is handed to the handlers through a context variable (caller.py).

The RateLimit-* metadata goes where each kind of client reads it. HTTP clients (REST, grpc-web) read
headers: it goes as initial metadata after a unary handler returns (so an error stays a
trailers-only reply, which Envoy turns into the right HTTP status) or with a stream's first message.
gRPC clients read trailers, which come with the status anyway: sending headers separately cost 20 %
of GetStatus throughput (BENCHMARKS.md). Errors carry it in their trailers (errors.abort).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from jobs.logs import bind
from server.auth import Authenticator
from server.caller import CALLER, Caller
from server.errors import abort
from server.interceptors import PerMethodInterceptor
from server.ratelimit import RateLimiter

# Headers Envoy adds to a call it made from an HTTP request: the REST transcoder's record of the
# original path, and the grpc-web marker the browser sends.
_SET_BY_HTTP_GATEWAYS = frozenset({"x-envoy-original-path", "x-grpc-web"})


class Gatekeeper(PerMethodInterceptor):
    def __init__(self, authenticator: Authenticator, limiter: RateLimiter, services: list[str]) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._limiter = limiter
        self._prefixes = tuple(f"/{service}/" for service in services)

    def adapt(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        if not method.startswith(self._prefixes):
            return handler  # health and reflection stay open
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._stream(handler.unary_stream))
        raise TypeError(f"{method}: only unary and server-streaming methods are guarded")

    async def _admit(self, context: grpc.aio.ServicerContext) -> Caller:
        metadata = context.invocation_metadata() or ()
        try:
            tenant = self._authenticator.tenant(metadata)
            allowance = await self._limiter.hit(tenant)
        except Exception as error:  # noqa: BLE001 - each is mapped in errors.status_for
            await abort(context, error)
        bind(tenant=tenant)
        over_http = any(name in _SET_BY_HTTP_GATEWAYS for name, _ in metadata)
        caller = Caller(tenant, allowance.headers if allowance else (), over_http)
        CALLER.set(caller)
        if caller.headers and not over_http:
            context.set_trailing_metadata(caller.headers)
        return caller

    def _unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = await self._admit(context)
            reply = await behavior(request, context)
            if caller.headers and caller.over_http:
                await context.send_initial_metadata(caller.headers)
            return reply

        return guarded

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            caller = await self._admit(context)
            headers = caller.headers if caller.over_http else ()
            async for message in behavior(request, context):
                if headers:
                    await context.send_initial_metadata(headers)
                    headers = ()
                yield message

        return guarded
