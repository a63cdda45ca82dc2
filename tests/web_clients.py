"""Minimal grpc-web and SSE clients over HTTP/1.1, as a browser speaks them, that record when each
message arrives, so tests can tell a stream that flows from one delivered all at the end."""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from google.protobuf.message import Message

from tests.credentials import TOKEN

SERVICE = "/longhaul.download.v1.DownloadService"


def _auth(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


@dataclass
class WebReply:
    status: int
    headers: dict[str, str]
    messages: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, payload)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_status(self) -> int:
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))


def _frames(chunks: Iterator[bytes]) -> Iterator[tuple[float, int, bytes]]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 5:
            length = int.from_bytes(buffer[1:5], "big")
            if len(buffer) < 5 + length:
                break
            yield time.monotonic(), buffer[0], buffer[5 : 5 + length]
            buffer = buffer[5 + length :]


def _base64_quanta(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """grpc-web-text: each 4-character quantum decodes on its own, padding included."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        usable = len(pending) - len(pending) % 4
        if usable:
            yield b"".join(base64.b64decode(pending[i : i + 4]) for i in range(0, usable, 4))
            pending = pending[usable:]


def grpc_web(
    port: int, method: str, request: Message | bytes, text: bool = False, timeout_s: float = 20, token: str | None = TOKEN
) -> WebReply:
    """One call; `request` is a message, or the raw body (frames and all) to send as it is."""
    kind = "application/grpc-web-text" if text else "application/grpc-web+proto"
    if isinstance(request, bytes):
        body = request
    else:
        payload = request.SerializeToString()
        body = b"\x00" + len(payload).to_bytes(4, "big") + payload
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request(
            "POST",
            f"{SERVICE}/{method}",
            base64.b64encode(body) if text else body,
            {"content-type": kind, "accept": kind, "x-grpc-web": "1", "origin": "http://example.test", **_auth(token)},
        )
        response = connection.getresponse()
        reply = WebReply(response.status, {k.lower(): v for k, v in response.getheaders()})

        def chunks() -> Iterator[bytes]:
            while chunk := response.read1(65536):
                yield chunk

        source = _base64_quanta(chunks()) if text else chunks()
        for arrival, flag, data in _frames(source):
            if flag & 0x80:
                for line in data.decode().split("\r\n"):
                    if ":" in line:
                        name, value = line.split(":", 1)
                        reply.trailers[name.strip().lower()] = value.strip()
            else:
                reply.messages.append((arrival, data))
        return reply
    finally:
        connection.close()


@dataclass
class SseReply:
    status: int
    headers: dict[str, str]
    events: list[tuple[float, dict]] = field(default_factory=list)  # (arrival, parsed data)


def sse(port: int, path: str, until=None, timeout_s: float = 20, token: str | None = TOKEN) -> SseReply:
    """Reads `data:` events until the server ends the stream or `until(event)` is true."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path, headers={"accept": "text/event-stream", **_auth(token)})
        response = connection.getresponse()
        reply = SseReply(response.status, {k.lower(): v for k, v in response.getheaders()})
        if response.status != 200:
            reply.events.append((time.monotonic(), json.loads(response.read() or b"{}")))
            return reply
        while line := response.readline():
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                reply.events.append((time.monotonic(), event))
                if until is not None and until(event):
                    break
        return reply
    finally:
        connection.close()


def rest(
    port: int, method: str, path: str, body: object = None, headers: dict | None = None, token: str | None = TOKEN
):
    """(status, headers, parsed JSON body or raw text) of one REST call, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        raw = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        all_headers = {"content-type": "application/json", **_auth(token), **(headers or {})}
        connection.request(method, path, raw, all_headers)
        response = connection.getresponse()
        data = response.read()
        try:
            parsed: object = json.loads(data)
        except ValueError:
            parsed = data.decode(errors="replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
    finally:
        connection.close()
