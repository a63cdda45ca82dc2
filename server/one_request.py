"""A call to a method that takes one request must bring it, and soon.

gRPC Python never answers a unary or server-streaming call whose client half-closes without a
message (an empty grpc-web body, a truncated frame): the handler is simply not run, and the call
hangs until the client's deadline, forever without one. This interceptor serves such methods as
client-streaming ones, which see the end of the requests: no message is INVALID_ARGUMENT at once,
and a message that does not arrive within REQUEST_WAIT_S is INVALID_ARGUMENT then. The wire format
is the same, so clients cannot tell.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.interceptors import PerMethodInterceptor

# How long a call may take to send its request: a well-behaved client sends it with the headers.
REQUEST_WAIT_S = 10.0


async def _the_request(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, method: str) -> Any:
    try:
        return await asyncio.wait_for(anext(requests), REQUEST_WAIT_S)
    except StopAsyncIteration:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the call to {method} carried no request message")
    except TimeoutError:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"the call to {method} sent no request message within {REQUEST_WAIT_S:g} s"
        )


def _unary(behavior: Callable[[Any, Any], Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def serve(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await _the_request(requests, context, method), context)

    return serve


def _server_streaming(behavior: Callable[[Any, Any], AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def serve(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in behavior(await _the_request(requests, context, method), context):
            yield response

    return serve


class OneRequest(PerMethodInterceptor):
    """For our services' methods (whose streams are async generators; gRPC's own services are left
    as they are)."""

    def __init__(self, services: list[str]) -> None:
        super().__init__()
        self._prefixes = tuple(f"/{service}/" for service in services)

    def adapt(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.request_streaming or not method.startswith(self._prefixes):
            return handler
        if handler.response_streaming:
            return handler._replace(
                request_streaming=True, unary_stream=None, stream_stream=_server_streaming(handler.unary_stream, method)
            )
        return handler._replace(request_streaming=True, unary_unary=None, stream_unary=_unary(handler.unary_unary, method))
