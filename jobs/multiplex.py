"""One Redis connection shared by every concurrent command of a process, pipelined automatically.

The hot paths (reading a job, the job scripts, the rate limit) issue one small command per call from
many concurrent tasks. Through redis-py's pool each such command costs about 75 µs of this process's
CPU (pool checkout, per-command timeout, retry wrapper, stream reader) on a server that is CPU-bound;
here it costs about 10 µs: commands are written to one connection as they come (all those of one
event-loop turn in one write), and replies, which Redis sends in order, resolve the waiting futures
first-in first-out. Measured in BENCHMARKS.md.

Only the commands the hot paths need are here; everything else (pub/sub, pipelines, streams) stays on
redis-py. Failures keep redis-py's meaning: a lost connection fails the commands in flight with
redis.exceptions.ConnectionError, a command unanswered for `timeout_s` fails with TimeoutError, and
each is retried like redis-py does (a few times with backoff) on a fresh connection.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import hashlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import BusyLoadingError, ConnectionError, ResponseError, TimeoutError

_RETRIES = 5
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0


def _backoff_s(attempt: int) -> float:
    return min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt)


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def _classify(error: ResponseError) -> ResponseError | BusyLoadingError:
    """A restarted Redis answers LOADING until its data is read back: the command did not run, so it
    is a connection-level failure to retry (redis-py's own parser says the same), not a reply."""
    return BusyLoadingError(str(error)) if str(error).startswith("LOADING") else error


def pack(args: tuple[Any, ...]) -> bytes:
    """A command in RESP, the protocol's request format."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Connection(asyncio.Protocol):
    """One connection: writes batched per event-loop turn, replies matched to commands in order."""

    def __init__(self, on_lost: Callable[[Connection], None], on_push: Callable[[Any], None] | None = None) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", replyError=ResponseError)
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._on_lost = on_lost
        # A subscribed connection also receives messages nobody asked for (pub/sub pushes).
        self._on_push = on_push
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.lost:
            future.set_exception(ConnectionError("Redis connection lost"))
            return future
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(command)
        self._waiting.append((future, time.monotonic()))
        return future

    def _flush(self) -> None:
        if self._outgoing and self._transport is not None and not self.lost:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if not self._waiting and self._on_push is not None:
                    self._on_push(reply)
                    continue
                if isinstance(reply, ResponseError) and str(reply).startswith(("READONLY", "NOREPLICAS")):
                    # A failover made this Redis a replica, or cut it off from its replicas: this
                    # command and every later write did not run. Failing them as a lost connection
                    # retries them on the primary the sentinels name now.
                    self.abort(ConnectionError(f"Redis is a replica now: {reply}"))
                    return
                future, _ = self._waiting.popleft()
                if not future.done():
                    if isinstance(reply, ResponseError):
                        future.set_exception(_classify(reply))
                    else:
                        future.set_result(reply)
        except hiredis.ProtocolError as error:
            self.abort(ConnectionError(f"Redis protocol error: {error}"))

    def oldest_wait_s(self) -> float:
        return time.monotonic() - self._waiting[0][1] if self._waiting else 0.0

    def abort(self, error: Exception) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        if self.lost:
            return
        self.lost = True
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self._on_lost(self)


Address = tuple[str, int]
# Where the primary is now (Sentinel's answer), asked before each connection; raises
# redis.exceptions.ConnectionError while no primary is known.
Locate = Callable[[], Awaitable[Address]]


async def open_protocol(
    options: dict[str, Any],
    on_lost: Callable[[Connection], None],
    on_push: Callable[[Any], None] | None = None,
    timeout_s: float = 5,
) -> Connection:
    """A connection to Redis as `options` (redis-py's parse_url) describe it, authenticated and on
    its database."""
    try:
        return await asyncio.wait_for(_open_protocol(options, on_lost, on_push), timeout_s)
    except builtins.TimeoutError as error:  # the built-in one, not redis's (imported above)
        raise TimeoutError(f"no connection to Redis within {timeout_s:g} s") from error


async def _open_protocol(
    options: dict[str, Any], on_lost: Callable[[Connection], None], on_push: Callable[[Any], None] | None
) -> Connection:
    loop = asyncio.get_running_loop()
    kind = options.get("connection_class")
    try:
        if kind is UnixDomainSocketConnection:
            _, protocol = await loop.create_unix_connection(lambda: Connection(on_lost, on_push), options["path"])
        else:
            tls = ssl.create_default_context() if kind is SSLConnection else None
            _, protocol = await loop.create_connection(
                lambda: Connection(on_lost, on_push), options.get("host", "localhost"), options.get("port", 6379), ssl=tls
            )
    except OSError as error:
        raise ConnectionError(f"cannot connect to Redis: {error}") from error
    try:
        if options.get("password"):
            auth = (options["username"], options["password"]) if options.get("username") else (options["password"],)
            await protocol.send(pack(("AUTH", *auth)))
        if options.get("db"):
            await protocol.send(pack(("SELECT", options["db"])))
    except BaseException:
        protocol.abort(ConnectionError("connection set-up failed"))
        raise
    return protocol


class MultiplexedRedis:
    """The subset of redis-py's asyncio client that the hot paths use, over one shared connection.

    `locate`, when given, says where the primary is before each connection (Sentinel), in place of
    the URL's host. `setup`, when given, names commands to run on each new connection (told its
    address) before any other, e.g. to turn on client-side caching; `reconnect()` makes the next
    command open a fresh one."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 30,
        connect_timeout_s: float = 5,
        setup: Callable[[Address], list[tuple[Any, ...]]] | None = None,
        locate: Locate | None = None,
        pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.options = parse_url(url)
        self._locate = locate
        self._pause = pause  # the backoff between attempts
        self._setup = setup
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._protocol: Connection | None = None
        self.connections_opened = 0  # a new one may be to another Redis (a failover)
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # -- commands ------------------------------------------------------------------------------

    async def execute_command(self, *args: Any) -> Any:
        """The reply, from this connection or, after a lost connection or a timeout, from a fresh
        one (a few attempts, with backoff, as redis-py retries)."""
        command = pack(args)
        for attempt in range(_RETRIES + 1):
            try:
                protocol = self._protocol if self._protocol is not None else await self._connect()
                return await protocol.send(command)
            except (ConnectionError, TimeoutError):
                if attempt == _RETRIES:
                    raise
                await self._pause(_backoff_s(attempt))
        raise AssertionError("unreachable")

    async def hgetall(self, key: str) -> dict[str, str]:
        flat = await self.execute_command("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def hget(self, key: str, field: str) -> str | None:
        return await self.execute_command("HGET", key, field)

    async def get(self, key: str) -> str | None:
        return await self.execute_command("GET", key)

    async def publish(self, channel: str, message: str) -> int:
        return await self.execute_command("PUBLISH", channel, message)

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._protocol is not None:
            self._protocol.abort(ConnectionError("client closed"))

    # -- the connection ------------------------------------------------------------------------

    async def _connect(self) -> Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None:
                return self._protocol
            protocol = await self._open()
            self._protocol = protocol
            self.connections_opened += 1
            if self._watchdog is None:
                self._watchdog = asyncio.create_task(self._watch_for_stalls())
            return protocol

    async def _open(self) -> Connection:
        protocol, address = await self.open_connection(self._lost)
        try:
            for command in self._setup(address) if self._setup else ():
                await protocol.send(pack(command))
        except BaseException:
            protocol.abort(ConnectionError("connection set-up failed"))
            raise
        return protocol

    async def open_connection(
        self, on_lost: Callable[[Connection], None], on_push: Callable[[Any], None] | None = None
    ) -> tuple[Connection, Address]:
        """A connection of its own to the Redis this client uses now, and that Redis's address."""
        options = self.options
        if self._locate is not None:
            host, port = await self._locate()
            options = {**options, "host": host, "port": port}
        protocol = await open_protocol(options, on_lost, on_push, timeout_s=self._connect_timeout_s)
        return protocol, (options.get("host", "localhost"), options.get("port", 6379))

    def reconnect(self) -> None:
        """Drops the connection (commands in flight fail over to the next one, as on any loss)."""
        if self._protocol is not None:
            self._protocol.abort(ConnectionError("reconnecting"))

    def _lost(self, protocol: Connection) -> None:
        if self._protocol is protocol:
            self._protocol = None

    async def _watch_for_stalls(self) -> None:
        """A command unanswered for the timeout means a dead connection that TCP has not noticed."""
        while True:
            await asyncio.sleep(min(1.0, self._timeout_s / 4))
            protocol = self._protocol
            if protocol is not None and protocol.oldest_wait_s() > self._timeout_s:
                protocol.abort(TimeoutError(f"Redis did not answer within {self._timeout_s:g} s"))


class Script:
    """A Lua script run by its SHA1, sent in full once when the server does not have it yet."""

    def __init__(self, client: MultiplexedRedis, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self._client.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except ResponseError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            return await self._client.execute_command("EVAL", self._source, len(keys), *keys, *args)
