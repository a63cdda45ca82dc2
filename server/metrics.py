"""gRPC server metrics under the names go-grpc-prometheus gave them, which the usual dashboards and
alerts query: started, handled (by code), messages received and sent, handling time.

An aio interceptor of our own: py-grpc-prometheus has no asyncio support. It is the outermost
interceptor, so calls the door refuses (UNAUTHENTICATED, RESOURCE_EXHAUSTED) are counted too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from server.interceptors import PerMethodInterceptor

_LABELS = ["grpc_type", "grpc_service", "grpc_method"]

STARTED = Counter("grpc_server_started", "RPCs started on the server.", _LABELS)
HANDLED = Counter("grpc_server_handled", "RPCs completed on the server, whatever their status.", [*_LABELS, "grpc_code"])
RECEIVED = Counter("grpc_server_msg_received", "Stream messages received on the server.", _LABELS)
SENT = Counter("grpc_server_msg_sent", "Stream messages sent by the server.", _LABELS)
# Prometheus's default buckets, as go-grpc-prometheus uses them.
HANDLING = Histogram("grpc_server_handling_seconds", "Time from the start of an RPC to its end.", _LABELS)

# The code names go-grpc-prometheus reports (Go's codes.Code.String()).
GO_CODE_NAMES = {
    code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


class _Method:
    """One method's label children, resolved once (a labels() lookup per call costs more than the
    increment)."""

    def __init__(self, kind: str, full_method: str) -> None:
        service, _, name = full_method.lstrip("/").partition("/")
        labels = (kind, service, name)
        self.started = STARTED.labels(*labels)
        self.received = RECEIVED.labels(*labels)
        self.sent = SENT.labels(*labels)
        self.handling = HANDLING.labels(*labels)
        self._labels = labels
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode, began: float) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = HANDLED.labels(*self._labels, GO_CODE_NAMES[code])
        child.inc()
        self.handling.observe(time.perf_counter() - began)


def call_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with, from what its handler raised (None: it returned)."""
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED  # the client went away (or the server is stopping)
    code = context.code()
    if code is not None:
        return code  # set by abort() or set_code()
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN


class GrpcMetrics(PerMethodInterceptor):
    def adapt(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(_Method("unary", method), handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._stream(_Method("server_stream", method), handler.unary_stream))
        return handler  # no client- or bidi-streaming methods here (reflection's is left uncounted)

    @staticmethod
    def _unary(m: _Method, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began = time.perf_counter()
            m.started.inc()
            m.received.inc()
            try:
                reply = await behavior(request, context)
            except BaseException as error:
                m.handled(call_code(context, error), began)
                raise
            m.sent.inc()
            m.handled(call_code(context, None), began)
            return reply

        return counted

    @staticmethod
    def _stream(m: _Method, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def counted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            began = time.perf_counter()
            m.started.inc()
            m.received.inc()
            try:
                async for message in behavior(request, context):
                    m.sent.inc()
                    yield message
            except BaseException as error:
                m.handled(call_code(context, error), began)
                raise
            m.handled(call_code(context, None), began)

        return counted
