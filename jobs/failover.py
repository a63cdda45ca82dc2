"""Following Sentinel's failovers without writing to a primary that is being replaced.

A connection asks the sentinels where the primary is when it opens. Two gaps remain, both seen in
the failover tests:
- while Sentinel promotes a replica, the old primary still accepts writes (it is demoted seconds
  later, or never if it is cut off) and loses them when it rejoins as a replica;
- connections opened before a failover stay on the old primary.
So each process listens to every sentinel's announcements. When the leader starts promoting a
replica (`+failover-state-send-slaveof-noone`), the process drops its connections and opens none
until the new primary is announced (`+switch-master`) or the failover is aborted: commands are
retried meanwhile (about a second), then everything reconnects to the new primary.
A process cut off from every sentinel misses the announcements; Redis's `min-replicas-to-write`
on the data nodes bounds what it could still write to an old primary (README).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

from jobs.settings import Settings

log = logging.getLogger(__name__)

PROMOTING = "+failover-state-send-slaveof-noone"
SWITCHED = "+switch-master"
ABORTED = "-failover-abort-*"
# The longest a promotion may keep connections closed if its end is never announced to us.
_FENCE_S = 10.0


class FollowingConnection(SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, asking where the primary is on every reconnect.
    redis-py 8.1 asks only in connect(): a connection that drops while in use reconnects from
    send_command to the address it had, the dead primary's, for good (seen in the failover tests)."""

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health, retry_socket_connect)


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    pass


class Sentinels(Sentinel):
    """The sentinels of REDIS_SENTINELS, shared by every client of a process."""

    def __init__(self, settings: Settings) -> None:
        auth = {"password": settings.redis_sentinel_password} if settings.redis_sentinel_password else {}
        super().__init__(settings.sentinel_addresses, sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1, **auth})
        self.master = settings.redis_sentinel_master
        self.fenced_until = 0.0  # while a promotion runs: no connection is opened
        self._settled: asyncio.Event | None = None

    async def pause(self, seconds: float) -> None:
        """Sleeps `seconds`, or less if a failover ends meanwhile: a command backing off after a
        failed attempt is sent again as soon as there is a primary to send it to."""
        if self._settled is None:
            self._settled = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), seconds)

    def settled(self) -> None:
        """A new primary was announced (or the failover aborted): wakes every `pause`."""
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        """The primary most sentinels name now (SENTINEL GET-MASTER-ADDR-BY-NAME, which names the
        promoted replica as soon as the leader has promoted it; SENTINEL MASTERS, which redis-py asks,
        names the old primary until the failover has ended)."""
        # While a replica is promoted no connection opens; the commands behind it are retried (the
        # clients back off for a few seconds). Waiting here instead, bounded only by the fence, was
        # tried: in three SIGKILL runs of four the first create then succeeded 16-23 s after the kill.
        if time.monotonic() < self.fenced_until:
            raise MasterNotFoundError(f"Sentinel is failing {service_name!r} over; waiting for the new primary")
        replies = await asyncio.gather(
            *(sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service_name) for sentinel in self.sentinels),
            return_exceptions=True,
        )
        votes = collections.Counter(
            (_text(reply[0]), int(reply[1])) for reply in replies if isinstance(reply, (list, tuple)) and len(reply) == 2
        )
        if not votes:
            raise MasterNotFoundError(f"no sentinel knows a primary for {service_name!r}: {replies}")
        return votes.most_common(1)[0][0]


class FailoverWatch:
    """Listens to every sentinel; fences `sentinels` during a promotion and calls
    `leave_old_primary` (which drops every connection of the process) when it starts and ends."""

    def __init__(self, settings: Settings, sentinels: Sentinels, leave_old_primary: Callable[[], Awaitable[None]]) -> None:
        self._settings = settings
        self._sentinels = sentinels
        self._leave = leave_old_primary
        self._tasks: list[asyncio.Task[None]] = []
        self._announced = ""  # the newest primary announced: each sentinel announces it

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(host, port)) for host, port in self._settings.sentinel_addresses]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, host: str, port: int) -> None:
        password = self._settings.redis_sentinel_password or None
        while True:
            client = Redis(host=host, port=port, password=password, socket_connect_timeout=1, decode_responses=True)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(PROMOTING, SWITCHED)
                    await pubsub.psubscribe(ABORTED)
                    async for message in pubsub.listen():
                        await self._on(message["channel"], message["data"].split(" "))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - that sentinel is away; the others still tell
                log.debug("sentinel %s:%d unreachable (%s); listening again shortly", host, port, error)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(1)

    async def _on(self, channel: str, words: list[str]) -> None:
        if channel == SWITCHED:
            # "<master name> <old ip> <old port> <new ip> <new port>"
            if len(words) == 5 and words[0] == self._sentinels.master and self._announced != f"{words[3]}:{words[4]}":
                self._announced = f"{words[3]}:{words[4]}"
                self._sentinels.fenced_until = 0.0
                log.warning("Redis failover: %s:%s replaced %s:%s as primary", words[3], words[4], words[1], words[2])
                await self._leave()
                self._sentinels.settled()
            return
        # "<instance type> <name> <ip> <port>[ @ <master name> <master ip> <master port>]"
        master = words[5] if len(words) >= 6 else words[1] if len(words) >= 2 else ""
        if master != self._sentinels.master:
            return
        if channel == PROMOTING:
            self._sentinels.fenced_until = time.monotonic() + _FENCE_S
            log.warning("Redis failover: Sentinel promotes %s:%s; waiting for it", words[2], words[3])
            await self._leave()
        else:
            self._sentinels.fenced_until = 0.0  # aborted: the primary stays
            self._sentinels.settled()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
