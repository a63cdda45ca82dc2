"""Malformed request bytes get INVALID_ARGUMENT, like any other bad input.

gRPC Python answers a request it cannot parse with UNKNOWN and a Python exception's text. This
interceptor gives our services' handlers a deserializer that turns a parse error into a
MalformedRequest value instead; `grpc_errors` then answers INVALID_ARGUMENT with a plain message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.errors import MalformedRequest


def _tolerant(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return MalformedRequest(f"the request body is not a valid protobuf message for {method}")

    return parse


class TolerantDecoding(grpc.aio.ServerInterceptor):
    def __init__(self, services: list[str]) -> None:
        self._prefixes = tuple(f"/{service}/" for service in services)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # one handler per method

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method in self._handlers:
            return self._handlers[method]
        handler = await continuation(details)
        if handler is None:
            return handler  # unknown method: gRPC answers UNIMPLEMENTED
        if handler.request_deserializer is not None and method.startswith(self._prefixes):
            handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer, method))
        self._handlers[method] = handler  # handlers are fixed per method: every call after is a lookup
        return handler
