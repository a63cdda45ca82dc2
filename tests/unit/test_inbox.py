"""A watch's inbox: items in order, a timeout when none comes, and a watcher too far behind told to
read the history instead of holding events in memory."""

from __future__ import annotations

import asyncio

from server.inbox import TIMEOUT, Inbox
from server.watch import RESYNC, SHUTDOWN, _deliver


async def test_items_come_out_in_order_and_a_quiet_inbox_times_out() -> None:
    inbox = Inbox(limit=4)
    inbox.put("a")
    inbox.put("b")
    assert [await inbox.get(1.0), await inbox.get(1.0)] == ["a", "b"]
    assert await inbox.get(0.01) is TIMEOUT


async def test_an_item_wakes_a_waiting_reader() -> None:
    inbox = Inbox(limit=4)
    reading = asyncio.create_task(inbox.get(10.0))
    await asyncio.sleep(0)  # the reader is waiting
    inbox.put("event")
    assert await asyncio.wait_for(reading, 1.0) == "event"


async def test_a_full_inbox_is_emptied_and_told_to_resync_but_shutdown_is_never_lost() -> None:
    inbox = Inbox(limit=2)
    for event in ({"seq": "1"}, {"seq": "2"}, {"seq": "3"}):
        _deliver(inbox, event)
    assert await inbox.get(0.01) is RESYNC
    assert await inbox.get(0.01) is TIMEOUT
    _deliver(inbox, {"seq": "4"})
    _deliver(inbox, {"seq": "5"})
    _deliver(inbox, SHUTDOWN)
    assert await inbox.get(0.01) is SHUTDOWN
