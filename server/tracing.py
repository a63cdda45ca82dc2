"""A span for each gRPC call, continuing the caller's trace (W3C traceparent), when tracing is on
(jobs/tracing.py). Named and described as OpenTelemetry's conventions for gRPC servers say.

Our own interceptor rather than opentelemetry-instrumentation-grpc's: that one builds each method's
handler again and wraps the servicer context in a proxy on every call, and measured it doubled the
server's CPU time per GetStatus. This one adapts each method once (interceptors.py) and reads only
the two headers it needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import Token
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.interceptors import PerMethodInterceptor
from server.metrics import call_code

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
# The codes that mean the server failed, for which the span's status is an error (the others are
# the caller's mistakes, or normal ends).
_SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})


class GrpcTracing(PerMethodInterceptor):
    def __init__(self) -> None:
        super().__init__()
        self._tracer = trace.get_tracer("longhaul.server")

    def adapt(self, method: str, handler: Any) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").partition("/")
        span_name = f"{service}/{name}"
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        def start(context: grpc.aio.ServicerContext) -> trace.Span:
            carrier = {k: v for k, v in context.invocation_metadata() or () if k in _TRACE_HEADERS}
            parent = _PROPAGATOR.extract(carrier) if carrier else None
            return self._tracer.start_span(span_name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes)

        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(start, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_stream(start, handler.unary_stream))
        return handler


def _end(span: trace.Span, token: Token[Context], context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
    code = call_code(context, error)
    if span.is_recording():  # most calls are not sampled where traffic is heavy
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            span.set_status(trace.StatusCode.ERROR, context.details() or code.name)
    span.end()
    otel_context.detach(token)


# The span is made current by hand: the SDK's start_as_current_span is a generator-based context
# manager, a few microseconds more per call.
def _unary(start: Callable[..., trace.Span], behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
        span = start(context)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            reply = await behavior(request, context)
        except BaseException as error:
            _end(span, token, context, error)
            raise
        _end(span, token, context, None)
        return reply

    return traced


def _stream(start: Callable[..., trace.Span], behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        span = start(context)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            async for message in behavior(request, context):
                yield message
        except BaseException as error:
            _end(span, token, context, error)
            raise
        _end(span, token, context, None)

    return traced

