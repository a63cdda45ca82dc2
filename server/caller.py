"""The caller of the current RPC, set by the gatekeeper (access.py) for the handlers to read.

Each RPC runs in its own asyncio task, so a context variable holds exactly that call's caller.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    tenant: str
    # Metadata every reply of the call carries: the RateLimit-* fields.
    headers: tuple[tuple[str, str], ...] = ()
    # Whether the call came through Envoy's REST transcoder or grpc-web: an HTTP client, which reads
    # headers (a gRPC client reads the trailers that come with the status, at no extra cost).
    over_http: bool = False


CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")


def tenant() -> str:
    return CALLER.get().tenant


def reply_headers() -> tuple[tuple[str, str], ...]:
    caller = CALLER.get(None)
    return caller.headers if caller is not None else ()
