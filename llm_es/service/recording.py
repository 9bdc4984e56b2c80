"""Appending to the log and waiting for the views: the write cycle every service room shares.

A command returns only after the views include its events (read-your-writes),
so the next command in the channel, on any instance, sees them.
"""

from __future__ import annotations

import asyncio

from llm_es.domain.events import Event
from llm_es.domain.views import ViewReader
from llm_es.store.log import EventStore

VIEW_WAIT_SECONDS = 10.0


class Recorder:
    """The event store and the views, with the waits that tie them together."""

    def __init__(self, store: EventStore, views: ViewReader) -> None:
        self.store = store
        self.views = views

    async def record(self, *events: Event) -> None:
        """Append events (in order) and wait until the views include them."""
        if len(events) == 1:
            seq = await self.store.append(events[0])
        else:
            seq = max(await self.store.append_all(events))
        await self.wait_for(seq)

    async def wait_for(self, seq: int) -> None:
        """Wait (bounded) until the views include stream sequence `seq`."""
        async with asyncio.timeout(VIEW_WAIT_SECONDS):
            await self.views.wait_for(seq)

    async def catch_up(self) -> None:
        """Wait until the views include everything already in the log.

        Another instance may have answered the previous command of this channel:
        its events are in the log (it replied after they were acknowledged), so
        folding up to the log's end now makes this instance see them too.
        """
        async with asyncio.timeout(VIEW_WAIT_SECONDS):
            await self.views.catch_up()
