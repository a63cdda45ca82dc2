"""The shape our server interceptors share: adapt each method's handler once, then look it up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc


class PerMethodInterceptor(grpc.aio.ServerInterceptor):
    """Handlers are fixed per method, so each is adapted on its method's first call and every later
    call is a dict lookup (this runs for every call, health checks included)."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = details.method
        if method in self._handlers:
            return self._handlers[method]
        handler = await continuation(details)
        if handler is None:
            return handler  # unknown method: gRPC answers UNIMPLEMENTED
        adapted = self._handlers[method] = self.adapt(method, handler)
        return adapted

    def adapt(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        """`handler` is grpc's RpcMethodHandler namedtuple (its stubs declare an abstract class
        without `_replace`)."""
        raise NotImplementedError


class Chain(PerMethodInterceptor):
    """Several interceptors as one: each method's handler is adapted by all of them once, the first
    outermost, and grpc.aio runs a single interceptor per call instead of one per layer (each layer
    it runs costs an awaited call per RPC)."""

    def __init__(self, *layers: PerMethodInterceptor) -> None:
        super().__init__()
        self._layers = layers

    def adapt(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        for layer in reversed(self._layers):
            handler = layer.adapt(method, handler)
        return handler
