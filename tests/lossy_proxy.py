"""A TCP proxy in front of a real Redis that can lose a reply: the command reaches Redis and runs,
and its client sees the connection drop (before any byte of the reply, or halfway through it)."""

from __future__ import annotations

import asyncio
import contextlib


class LossyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.lost_replies = 0
        self._lose: str | None = None  # "whole" or "half" for the next reply
        self._server: asyncio.Server | None = None

    async def start(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_next_reply(self, how: str = "whole") -> None:
        """The next reply from Redis is dropped ("whole") or cut off halfway ("half"), and that
        client connection closed."""
        assert how in ("whole", "half")
        self._lose = how

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        upstream = asyncio.create_task(self._pipe(client_reader, redis_writer))
        downstream = asyncio.create_task(self._replies(redis_reader, client_writer))
        await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for writer in (client_writer, redis_writer):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if self._lose is not None:
                    how, self._lose = self._lose, None
                    self.lost_replies += 1
                    if how == "half":
                        writer.write(data[: len(data) // 2])
                        await writer.drain()
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
