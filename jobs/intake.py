"""Pausing intake: while an operator has it paused, no new work is taken (InitiateDownload and
RetryDownload answer UNAVAILABLE with a Retry-After); jobs queued or running carry on.

The pause is one Redis key, read by the create and retry scripts themselves: every server of the
deployment refuses at once, at no extra round trip.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import cast

from redis.asyncio import Redis

from jobs.keys import Keys

DEFAULT_RETRY_AFTER_S = 60


@dataclass(frozen=True)
class Pause:
    by: str  # the operator
    reason: str
    since_ms: int
    retry_after_s: int  # what refused callers are told to wait

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Pause:
        return cls(**json.loads(text))


class Intake:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.intake

    async def pause(self, by: str, reason: str, retry_after_s: int = DEFAULT_RETRY_AFTER_S) -> tuple[Pause, bool]:
        """Pauses intake; (the pause, True). When it is paused already, that pause stays as it is
        (who paused it, since when): (that pause, False)."""
        pause = Pause(by, reason, int(time.time() * 1000), retry_after_s)
        if await self._redis.set(self._key, pause.to_json(), nx=True):
            return pause, True
        return await self.paused() or pause, False

    async def resume(self) -> None:
        await self._redis.delete(self._key)

    async def paused(self) -> Pause | None:
        text = cast(str | None, await self._redis.get(self._key))  # decode_responses (connections.py)
        return Pause.from_json(text) if text else None
