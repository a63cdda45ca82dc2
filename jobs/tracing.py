"""OpenTelemetry traces, configured only by the standard OTEL_* variables.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, and off at no
cost: no SDK is loaded, no interceptor is installed and no context is stored with jobs. On, spans go
over OTLP/HTTP (protobuf) in batches; OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
OTEL_BSP_* and the exporter's own OTEL_EXPORTER_OTLP_* variables apply as the SDK reads them.

A job keeps the W3C trace context of the call that created it (`traceparent` in its record). A worker
may take the job minutes later, so each attempt is a trace of its own that *links* to the creating
call's span rather than a child of it; the attempt's S3 calls are its children.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"


def enabled() -> bool:
    return bool(traces_url())


@functools.cache  # read once: the environment of a process does not change its tracing
def traces_url() -> str:
    """Where spans go, as the OTLP/HTTP exporter reads the settings; "" when tracing is off."""
    if url := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return url
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    return base.rstrip("/") + "/v1/traces" if base else ""


def setup_tracing(service: str) -> Callable[[], None]:
    """Starts exporting this process's spans when tracing is on; returns what flushes and stops it."""
    if not enabled():
        return lambda: None
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise SystemExit(f"{service}: OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: Longhaul exports over http/protobuf only")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, win over this default name.
    resource = Resource.create({"service.name": f"longhaul-{service}"} if not os.environ.get("OTEL_SERVICE_NAME") else {})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def current_traceparent() -> str:
    """The W3C traceparent of the current span; "" when there is none (tracing off)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def current_trace_id() -> str:
    """The trace id of the current span, in hex; "" when there is none (tracing off)."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""


def trace_id_of(traceparent: str) -> str:
    """The trace id a W3C traceparent names; "" when it is not one."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def link_to(traceparent: str) -> list[trace.Link]:
    """A link to the span a traceparent names, for a span that follows from it in a trace of its own."""
    if not traceparent:
        return []
    context = trace.get_current_span(_PROPAGATOR.extract({TRACEPARENT: traceparent})).get_span_context()
    return [trace.Link(context)] if context.is_valid else []


class TracedS3:
    """An aiobotocore S3 client whose calls are spans (children of the current one), named and
    described as OpenTelemetry's conventions for AWS SDK calls say. (The botocore instrumentation
    does not reach aiobotocore's asynchronous calls.)"""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._tracer = trace.get_tracer("longhaul.s3")

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        operation = self._client.meta.method_to_api_mapping.get(name)
        if operation is None:
            return method  # not an API call (meta, exceptions, paginators...)

        async def call(*args: Any, **kwargs: Any) -> Any:
            attributes = {"rpc.system": "aws-api", "rpc.service": "S3", "rpc.method": operation}
            if "Bucket" in kwargs:
                attributes["aws.s3.bucket"] = kwargs["Bucket"]
            with self._tracer.start_as_current_span(f"S3.{operation}", kind=trace.SpanKind.CLIENT, attributes=attributes):
                return await method(*args, **kwargs)

        return call
