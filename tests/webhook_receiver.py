"""A webhook receiver for the tests: a real HTTP server on loopback that verifies each delivery's
signature with the `standardwebhooks` package (an implementation of the scheme that is not ours),
answers with the statuses it is told to, and hands each delivery to the test as it arrives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devstack.processes import free_port


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    payload: dict[str, Any]  # {} when the signature did not verify
    answered: int  # 401 when the signature did not verify
    path_qs: str


class Receiver:
    def __init__(self, secret: str, answers: Iterable[int] = (), then: int = 200, hold_first: bool = False) -> None:
        """Answers the given statuses in turn, then `then` to every delivery after. `hold_first`:
        the first delivery gets no answer until `release()` (or 10 s), as a slow receiver."""
        self._verifier = Webhook(secret)
        self._answers = list(answers)
        self._then = then
        self._hold = hold_first
        self._released = asyncio.Event()
        self._arrived: asyncio.Queue[Delivery] = asyncio.Queue()
        self.deliveries: list[Delivery] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/longhaul?source=tests"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/longhaul", self._receive)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        self._released.set()

    async def next(self, timeout_s: float = 15) -> Delivery:
        """The next delivery, once it has arrived."""
        return await asyncio.wait_for(self._arrived.get(), timeout_s)

    def nothing_more(self) -> bool:
        return self._arrived.empty()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = self._verifier.verify(body, dict(request.headers))
            answer = self._answers.pop(0) if self._answers else self._then
        except WebhookVerificationError:
            payload, answer = {}, 401
        delivery = Delivery(request.headers.get("webhook-id", ""), payload, answer, request.path_qs)
        self.deliveries.append(delivery)
        self._arrived.put_nowait(delivery)
        if self._hold:
            self._hold = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), 10)
        return web.Response(status=answer, text="thanks" if answer < 300 else "not now")
