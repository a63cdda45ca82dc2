"""Malformed request bytes get INVALID_ARGUMENT, like any other bad input.

gRPC Python answers a request it cannot parse with UNKNOWN and a Python exception's text. This
interceptor gives our services' handlers a deserializer that turns a parse error into a
MalformedRequest value instead; `grpc_errors` then answers INVALID_ARGUMENT with a plain message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.errors import MalformedRequest
from server.interceptors import PerMethodInterceptor


def _tolerant(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return MalformedRequest(f"the request body is not a valid protobuf message for {method}")

    return parse


class TolerantDecoding(PerMethodInterceptor):
    def __init__(self, services: list[str]) -> None:
        super().__init__()
        self._prefixes = tuple(f"/{service}/" for service in services)

    def adapt(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        if handler.request_deserializer is None or not method.startswith(self._prefixes):
            return handler
        return handler._replace(request_deserializer=_tolerant(handler.request_deserializer, method))
