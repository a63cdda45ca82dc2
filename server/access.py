"""The door of every RPC but health and reflection: who is calling (auth.py), and within their rate.

It runs in the server, so direct gRPC, grpc-web and REST through Envoy are all covered alike. The
caller's tenant is handed to the handlers through a context variable (caller.py). The RateLimit-* metadata goes out with the reply: with the
first message of a stream, after the handler of a unary call (so an error stays a trailers-only
reply, which proxies turn into the right HTTP status), and with any error (errors.abort).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.auth import Authenticator
from server.caller import CALLER, Caller, reply_headers
from server.errors import abort
from server.ratelimit import RateLimiter


class Gatekeeper(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, limiter: RateLimiter, services: list[str]) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        self._prefixes = tuple(f"/{service}/" for service in services)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # one wrapped handler per method

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method in self._handlers:
            return self._handlers[method]
        handler = await continuation(details)
        if handler is None or not method.startswith(self._prefixes):
            return handler
        if handler.unary_unary is not None:
            wrapped = handler._replace(unary_unary=self._unary(handler.unary_unary))
        elif handler.unary_stream is not None:
            wrapped = handler._replace(unary_stream=self._stream(handler.unary_stream))
        else:
            raise TypeError(f"{method}: only unary and server-streaming methods are guarded")
        self._handlers[method] = wrapped
        return wrapped

    async def _admit(self, context: grpc.aio.ServicerContext) -> None:
        try:
            tenant = self._authenticator.tenant(context.invocation_metadata() or ())
            allowance = await self._limiter.hit(tenant)
        except Exception as error:  # noqa: BLE001 - each is mapped in errors.status_for
            await abort(context, error)
        CALLER.set(Caller(tenant, allowance.headers if allowance else ()))

    def _unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(context)
            reply = await behavior(request, context)
            if headers := reply_headers():
                await context.send_initial_metadata(headers)
            return reply

        return guarded

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._admit(context)
            headers = reply_headers()
            async for message in behavior(request, context):
                if headers:
                    await context.send_initial_metadata(headers)
                    headers = ()
                yield message

        return guarded
