"""What an acknowledged create or cancel means when Redis has replicas (README "Durability").

Redis replicates asynchronously: a write the primary has answered can still be missing from the
replica that a failover promotes. With REDIS_WAIT_REPLICAS = N > 0, creates and cancels are answered
only once every replica connected to the primary, and at least N, has them (WAIT, on the connection
that wrote, right after the write). Sentinel promotes one of the connected replicas, so an
acknowledged job survives the loss of the primary. When the replicas do not confirm in time the
caller gets NotReplicated (UNAVAILABLE): the write may survive or not, and repeating the call is safe.

"Every connected replica" rather than a fixed N: after a failover the old primary is gone and one
replica fewer is connected; a fixed count of all of them would refuse every create until it is back.
"""

from __future__ import annotations

import time
from typing import Any

from jobs.errors import NotReplicated
from jobs.multiplex import MultiplexedRedis, Script
from jobs.settings import Settings

# How long the count of connected replicas (from ROLE) is trusted; a replica that connects or drops
# is reflected within this.
_REPLICAS_TTL_S = 1.0


class Replication:
    def __init__(self, commands: MultiplexedRedis | Any, settings: Settings, probe_key: str) -> None:
        self.minimum = settings.redis_wait_replicas
        if self.minimum and not isinstance(commands, MultiplexedRedis):
            raise TypeError("waiting for replicas needs the multiplexed client (one connection to WAIT on)")
        self._commands = commands
        self._timeout_ms = settings.redis_wait_timeout_ms
        self._probe_key = probe_key  # a counter written only to give WAIT something to wait for
        self._connected = 0
        self._counted_at = float("-inf")

    async def write(self, what: str, script: Script | Any, keys: list[str], args: list[Any]) -> Any:
        """The script's reply, once the write is as durable as the settings ask."""
        if not self.minimum:
            return await script(keys=keys, args=args)
        wanted = await self._wanted()
        reply, confirmed = await script.then_wait(wanted, self._timeout_ms, keys=keys, args=args)
        await self._check(what, confirmed, wanted)
        return reply

    async def confirm(self, what: str) -> None:
        """For an answer that wrote nothing (a repeated create or cancel): waits until what it
        reports, written earlier perhaps by another connection, is on the replicas."""
        if not self.minimum:
            return
        wanted = await self._wanted()
        # WAIT covers this connection's own writes only: one more write orders the earlier one before it.
        _, confirmed = await self._commands.execute_then_wait(("INCR", self._probe_key), wanted, self._timeout_ms)
        await self._check(what, confirmed, wanted)

    async def _check(self, what: str, confirmed: int, wanted: int) -> None:
        if confirmed >= wanted:
            return
        # Too few: perhaps a replica went away (with the old primary, after a failover). Counted
        # again, the replicas still connected may all have it.
        self._counted_at = float("-inf")
        wanted = await self._wanted()
        if confirmed < wanted:
            raise NotReplicated(what, confirmed, wanted, self._timeout_ms)

    async def _wanted(self) -> int:
        if time.monotonic() - self._counted_at > _REPLICAS_TTL_S:
            role = await self._commands.execute_command("ROLE")
            self._connected = len(role[2]) if role[0] == "master" else 0
            self._counted_at = time.monotonic()
        return max(self.minimum, self._connected)
