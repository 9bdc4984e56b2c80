"""Appending to the log and waiting for the views: the write cycle every service room shares.

A command returns only after the views include its events (read-your-writes),
so the next command in the channel, on any instance, sees them.

`record` asks the server for no acks: the views' fold confirms the events. The
read side follows the log with an ordered consumer, which delivers a message
only once the stream has stored it, and the fold has to be waited for anyway:
an ack says the same thing, at the price of one more message per event for the
server to send and this process to read, and a request (inbox, future, timer)
per event. Measured with bench/turns.py (3 A/B runs each): own overhead at
concurrency 1 2.23 -> 1.59 ms, turns/s at 32 609 -> 702, plugin CPU per turn at
32 1.58 -> 1.37 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from llm_es.domain.events import Event, TurnCompleted, TurnFailed
from llm_es.domain.views import EventFeed, ViewReader
from llm_es.errors import AppendRefused, EventsQuarantined, OperationalError, OutcomeUnknown
from llm_es.metrics import PluginMetrics
from llm_es.store.log import EventStore

VIEW_WAIT_SECONDS = 10.0
CONFIRM_RETRY_PAUSE_SECONDS = 0.5
"""Between appends again of events the log has not confirmed (no responders comes back
at once; a timeout after 5 s): a reconnect's buffered sends may confirm them meanwhile."""
CONFIRM_MAX_ATTEMPTS = 1000
QUARANTINED_KEPT = 1024
"""Recent sequences the views quarantined, remembered to tell a writer its events were."""
CONFIRM_SECONDS = 1.0
"""How long `record` waits for the fold to show its events before it appends them again
with acks: a message lost on the way (a reconnect) or refused by the stream would
otherwise never be confirmed. Far above a fold's lag under load (p99 of a turn at
concurrency 32 is ~0.1 s), so a healthy log never takes the slow path."""


class RecordedViews(ViewReader, EventFeed, Protocol):
    """The read side a Recorder needs: the views, and the events as they are folded."""


class Recorder:
    """The event store and the views, with the waits that tie them together."""

    def __init__(
        self, store: EventStore, views: RecordedViews, metrics: PluginMetrics | None = None
    ) -> None:
        """`metrics`: where append latencies go (a registry of its own when None)."""
        self.store = store
        self.views = views
        self.append_seconds = (metrics or PluginMetrics()).append_seconds
        """From sending events until the views include them (the admission's own too)."""
        self._awaited: dict[str, asyncio.Future[int]] = {}
        """Event id -> resolved with its sequence once the views have folded it."""
        self._ends: dict[str, list[asyncio.Future[int]]] = {}
        """Turn id -> futures resolved with the sequence of the turn's end once folded."""
        self._unfollow: Callable[[], None] | None = None
        self._quarantined: deque[int] = deque(maxlen=QUARANTINED_KEPT)
        """The latest sequences the views folded as quarantined (skipped)."""

    def _follow(self) -> None:
        if self._unfollow is None:
            _, self._unfollow = self.views.follow(self._folded)

    def expect_turn_end(self, turn_id: str) -> asyncio.Future[int]:
        """A future resolved with the sequence of the turn's end once the views fold it.

        Ask before looking in the log, so an end folded meanwhile is not missed;
        `forget_turn_end` when done with it.
        """
        self._follow()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._ends.setdefault(turn_id, []).append(future)
        return future

    def forget_turn_end(self, turn_id: str, future: asyncio.Future[int]) -> None:
        waiting = self._ends.get(turn_id, [])
        if future in waiting:
            waiting.remove(future)
        if not waiting:
            self._ends.pop(turn_id, None)

    async def record(self, *events: Event, confirm_within: float | None = None) -> None:
        """Append events (in order) and wait until the views include them.

        With `confirm_within`, events the log does not confirm (nats-server away:
        an append timed out, no stream answered) are appended again with the same
        ids until it does, for at most that many seconds; then `OutcomeUnknown`,
        as they may still be stored. Without it the first failure is raised.
        """
        self._follow()
        loop = asyncio.get_running_loop()
        folded = [loop.create_future() for _ in events]
        awaited = self._awaited
        for event, future in zip(events, folded, strict=True):
            awaited[event.id] = future
        sent = time.perf_counter()
        try:
            await self.store.send(events)
            try:
                async with asyncio.timeout(CONFIRM_SECONDS):
                    # Folded in log order: once the last is in, the others are.
                    for future in folded:
                        await future
                self.append_seconds.observe(time.perf_counter() - sent)
                return
            except TimeoutError:
                pass
            # Not seen: append again with acks; the ones already stored come back
            # as duplicates with their sequences, the others are stored now.
            if confirm_within is None:
                await self._stored(await self.store.append_all(events))
            else:
                await self._confirm(events, folded, confirm_within)
            self.append_seconds.observe(time.perf_counter() - sent)
        finally:
            for event in events:
                awaited.pop(event.id, None)

    async def _confirm(
        self, events: Sequence[Event], folded: Sequence[asyncio.Future[int]], within: float
    ) -> None:
        """Append again until the views include the events, for at most `within` seconds."""
        try:
            async with asyncio.timeout(within):
                for _ in range(CONFIRM_MAX_ATTEMPTS):
                    try:
                        await self._stored(await self.store.append_all(events))
                        return
                    except (AppendRefused, EventsQuarantined):
                        raise  # the log answered: appending again gets the same answer
                    except OperationalError:
                        pass  # the server is away; what was sent may arrive on reconnect
                    last = folded[-1]
                    await asyncio.wait([last], timeout=CONFIRM_RETRY_PAUSE_SECONDS)
                    if last.done():  # folded in log order: the others are in too
                        return
        except TimeoutError:
            pass
        raise OutcomeUnknown(
            f"{len(events)} event(s) sent to {self.store.stream}, not confirmed within"
            f" {within:.0f}s"
        )

    async def _stored(self, seqs: Sequence[int]) -> None:
        """Wait until the views include the appended `seqs`; EventsQuarantined when they
        skipped one (stored, but not part of any view: see `EventsQuarantined`)."""
        await self.wait_for(max(seqs))
        skipped = sorted(set(seqs).intersection(self._quarantined))
        if skipped:
            raise EventsQuarantined(f"events at {skipped} were stored but quarantined")

    def _folded(self, seq: int, event: Event | None) -> None:
        if event is None:
            self._quarantined.append(seq)
            return
        if self._ends and isinstance(event, TurnCompleted | TurnFailed):
            for end in self._ends.get(event.turn_id, ()):
                if not end.done():
                    end.set_result(seq)
        if not self._awaited:
            return
        future = self._awaited.get(event.id)
        if future is not None and not future.done():
            future.set_result(seq)

    async def wait_for(self, seq: int) -> None:
        """Wait (bounded) until the views include stream sequence `seq`."""
        async with asyncio.timeout(VIEW_WAIT_SECONDS):
            await self.views.wait_for(seq)

    async def catch_up(self) -> None:
        """Wait until the views include everything already in the log.

        Another instance may have answered the previous command of this channel:
        its events are in the log (it replied after they were stored), so
        folding up to the log's end now makes this instance see them too.
        """
        async with asyncio.timeout(VIEW_WAIT_SECONDS):
            await self.views.catch_up()
