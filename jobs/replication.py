"""What an acknowledged create or cancel means when Redis has replicas (README "Durability").

Redis replicates asynchronously: a write the primary has answered can still be missing from the
replica that a failover promotes. With REDIS_WAIT_REPLICAS = N > 0, creates and cancels are answered
only once every replica connected to the primary, and at least N, has them (WAIT, on the connection
that wrote, right after the write). Sentinel promotes one of the connected replicas, so an
acknowledged job survives the loss of the primary. When the replicas do not confirm in time the
caller gets NotReplicated (UNAVAILABLE): the write may survive or not, and repeating the call is safe.
When the replicas cannot confirm (none connected, or the last WAIT fell short a moment ago), the call
is refused before it writes anything (ReplicasUnavailable).

One WAIT at a time (`ReplicaWaits`): a WAIT holds the connection it runs on, which every command of
the process shares, until the replicas confirm or its timeout; one per write, pipelined, would hold
the connection for a timeout per write when the replicas stop confirming (seen after a forced
failover: every call of the server stalled past Envoy's 10 s). Each WAIT covers every write answered
before it was sent, so the writes that arrive while one runs share the next.

"Every connected replica" rather than a fixed N: after a failover the old primary is gone and one
replica fewer is connected; a fixed count of all of them would refuse every create until it is back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jobs.errors import NotReplicated, ReplicasUnavailable
from jobs.multiplex import MultiplexedRedis, Script
from jobs.settings import Settings

# How long the count of connected replicas (from ROLE) is trusted; a replica that connects or drops
# is reflected within this. Also how long creates are refused at once after a WAIT fell short.
_REPLICAS_TTL_S = 1.0


class Replication:
    def __init__(self, commands: MultiplexedRedis | Any, settings: Settings, probe_key: str) -> None:
        self.minimum = settings.redis_wait_replicas
        if self.minimum and not isinstance(commands, MultiplexedRedis):
            raise TypeError("waiting for replicas needs the multiplexed client (one connection to WAIT on)")
        self._commands = commands
        self._timeout_ms = settings.redis_wait_timeout_ms
        self._waits = ReplicaWaits(commands, self._timeout_ms)
        self._probe_key = probe_key  # a counter written only to give WAIT something to wait for
        self._connected = 0
        self._counted_at = float("-inf")
        self._counted_on = -1  # the connection counted on (MultiplexedRedis.connections_opened)
        self._unconfirmed_until = float("-inf")  # after a WAIT fell short: refuse at once until then

    async def write(self, what: str, script: Script | Any, keys: list[str], args: list[Any]) -> Any:
        """The script's reply, once the write is as durable as the settings ask."""
        if not self.minimum:
            return await script(keys=keys, args=args)
        wanted = await self._ready(what)
        reply = await script(keys=keys, args=args)
        await self._check(what, await self._waits.confirmed(self._commands.connections_opened, wanted), wanted)
        return reply

    async def confirm(self, what: str) -> None:
        """For an answer that wrote nothing (a repeated create or cancel): waits until what it
        reports, written earlier perhaps by another connection, is on the replicas."""
        if not self.minimum:
            return
        wanted = await self._ready(what)
        # WAIT covers this connection's own writes only: one more write orders the earlier one before it.
        await self._commands.execute_command("INCR", self._probe_key)
        await self._check(what, await self._waits.confirmed(self._commands.connections_opened, wanted), wanted)

    async def _ready(self, what: str) -> int:
        """How many replicas to wait for, or ReplicasUnavailable when they cannot confirm now."""
        wanted = await self._wanted()
        if self._connected < self.minimum or time.monotonic() < self._unconfirmed_until:
            raise ReplicasUnavailable(what, self._connected, self.minimum)
        return wanted

    async def _check(self, what: str, confirmed: int, wanted: int) -> None:
        if confirmed >= wanted:
            return
        # Too few: perhaps a replica went away (with the old primary, after a failover). Counted
        # again, the replicas still connected may all have it.
        self._counted_at = float("-inf")
        wanted = await self._wanted()
        if confirmed < wanted:
            self._unconfirmed_until = time.monotonic() + _REPLICAS_TTL_S
            raise NotReplicated(what, confirmed, wanted, self._timeout_ms)

    async def _wanted(self) -> int:
        # Counted again on a new connection too: after a failover, the old primary's count (one
        # replica more, the new primary) would make every WAIT wait out its timeout.
        connection = self._commands.connections_opened
        if time.monotonic() - self._counted_at > _REPLICAS_TTL_S or connection != self._counted_on:
            role = await self._commands.execute_command("ROLE")
            self._connected = len(role[2]) if role[0] == "master" else 0
            self._counted_at = time.monotonic()
            self._counted_on = self._commands.connections_opened
        return max(self.minimum, self._connected)


class ReplicaWaits:
    """The WAITs of one multiplexed connection, one at a time, each for the writes answered before
    it was sent (group commit)."""

    def __init__(self, commands: MultiplexedRedis, timeout_ms: int) -> None:
        self._commands = commands
        self._timeout_ms = timeout_ms
        self._waiting: list[tuple[int, int, asyncio.Future[int]]] = []  # (connection, replicas, answer)
        self._task: asyncio.Task[None] | None = None

    async def confirmed(self, connection: int, replicas: int) -> int:
        """How many replicas have the writes this connection (`connections_opened` when their reply
        came) answered so far, waiting for `replicas` of them at most the timeout; 0 when the
        connection was replaced meanwhile (the WAIT would not cover them)."""
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((connection, replicas, answer))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await answer

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            sent_on = self._commands.connections_opened
            try:
                confirmed = await self._commands.execute_command("WAIT", max(r for _, r, _ in batch), self._timeout_ms)
            except Exception as error:  # noqa: BLE001 - each caller gets it (Redis unreachable)
                for _, _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            # A WAIT retried on a fresh connection returns at once and covers none of these writes.
            valid = self._commands.connections_opened == sent_on
            for connection, _, answer in batch:
                if not answer.done():
                    answer.set_result(confirmed if valid and connection == sent_on else 0)
