"""The tests' API keys: two tenants, so tests can check that neither sees the other's jobs, and an
operator; and the webhook secret."""

from __future__ import annotations

import collections
from pathlib import Path

import grpc

from jobs.webhooks import new_secret
from server.apikeys import entry_line, new_key

TENANT, OTHER_TENANT = "tenant-a", "tenant-b"
_ID, TOKEN = new_key()
_OTHER_ID, OTHER_TOKEN = new_key()
OPERATOR = "ops-alice"
_OPERATOR_ID, OPERATOR_TOKEN = new_key()
BEARER = (("authorization", f"Bearer {TOKEN}"),)
# The tests' WEBHOOK_SECRET.
WEBHOOK_SECRET = new_secret()


def write_key_file(path: Path) -> Path:
    lines = [
        entry_line(_ID, TOKEN, TENANT),
        entry_line(_OTHER_ID, OTHER_TOKEN, OTHER_TENANT),
        entry_line(_OPERATOR_ID, OPERATOR_TOKEN, OPERATOR, "on call", operator=True),
    ]
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class _Bearer:
    """Sends the token with every call of a channel, as a service's own client would."""

    def __init__(self, token: str) -> None:
        self._metadata = bearer(token)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))


# grpc.aio files each interceptor under one kind of call only: one class per kind.
class _UnaryBearer(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _StreamBearer(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


def channel(address: str, token: str = TOKEN) -> grpc.aio.Channel:
    """An async channel whose calls carry `token`."""
    return grpc.aio.insecure_channel(address, interceptors=[_UnaryBearer(token), _StreamBearer(token)])


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _SyncBearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._metadata = bearer(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self._metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


def sync_channel(address: str, token: str = TOKEN) -> grpc.Channel:
    """A blocking channel whose calls carry `token`."""
    return grpc.intercept_channel(grpc.insecure_channel(address), _SyncBearer(token))
