"""The steps an event publisher publishes: log events after a position, folded into the
seed's observability events, read from the log (an ordered consumer) or taken from the
views' fold in process (`EventFeed`), whichever is ahead.

The fold starts early enough before the position (`fold_window_start`) that the
usage thresholds come out the same as a fold of the whole log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from llm_es.config import RateLimitsConfig
from llm_es.domain.events import Event
from llm_es.domain.observations import Observation, ObservationFold, fold_window_start
from llm_es.domain.turn_order import OpenTurns
from llm_es.domain.views import EventFeed
from llm_es.logs import log_kv
from llm_es.store.codec import UnknownEventError
from llm_es.store.follow import read_bounded
from llm_es.store.log import EventStore
from llm_es.store.quarantine import Quarantine, admit_event, stored_ns_of

logger = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 0.2
"""Longest a derivation waits for a log event before it yields None (a chance to stop)."""
CONSUMER_HEARTBEAT_SECONDS = 1.0
DERIVE_BUFFER = 4096
"""Log events read ahead of the publisher at most."""
FEED_BUFFER = 65_536
"""Events the views may hand on ahead of the publisher before it reads the log instead."""
REPLAY_CHECK_EVERY = 1024
"""While folding without publishing, a derivation yields this often (a chance to stop)."""


@dataclass(frozen=True, slots=True)
class _Step:
    """One log event read: past the starting position, with what it produces."""

    seq: int
    observations: list[Observation]
    replayed: bool = False
    """Folded without publishing (at or before the starting position): a chance to stop."""


@dataclass(slots=True)
class _Cursor:
    """The last log sequence folded by one derivation, wherever the events came from."""

    last: int

    def fold(
        self, fold: ObservationFold, seq: int, event: Event | None, after: int
    ) -> _Step | None:
        """Fold the event after `last`: its step past `after`, now and then one before."""
        self.last = seq
        observations = [] if event is None else fold.apply(seq, event)
        if seq > after:
            return _Step(seq, observations)
        if seq % REPLAY_CHECK_EVERY == 0:
            return _Step(seq, [], replayed=True)
        return None


class _Following:
    """The views' events (`EventFeed`) buffered for one derivation.

    The views hand each event on synchronously while folding, so the buffer
    cannot push back: past `FEED_BUFFER` waiting events it stops following
    and marks itself overflowed, and the derivation reads the log instead.
    """

    def __init__(self, feed: EventFeed) -> None:
        self._events: deque[tuple[int, Event | None]] = deque()
        self._ready = asyncio.Event()
        self.overflowed = False
        self.start, self._stop = feed.follow(self._listen)

    def _listen(self, seq: int, event: Event | None) -> None:
        if self.overflowed:
            return
        if len(self._events) >= FEED_BUFFER:
            self.overflowed = True
            self._stop()
        else:
            self._events.append((seq, event))
        self._ready.set()

    def take(self) -> tuple[int, Event | None] | None:
        return self._events.popleft() if self._events else None

    async def wait(self) -> None:
        """Until an event is buffered or the feed overflowed (callers bound the wait)."""
        if self._events or self.overflowed:
            return
        self._ready.clear()
        await self._ready.wait()

    def close(self) -> None:
        self._stop()


async def _read_feed(
    fold: ObservationFold, cursor: _Cursor, after: int, following: _Following, turns: OpenTurns
) -> AsyncGenerator[_Step | None, None]:
    """`derive`'s steps from the views' feed, until it overflows (None when idle a while).

    The views admitted each event (None: quarantined); `turns` follows them, so a read
    of the log after an overflow judges the turns' ends as the views do."""
    while True:
        taken = following.take()
        if taken is None:
            if following.overflowed:
                return
            try:
                async with asyncio.timeout(IDLE_POLL_SECONDS):
                    await following.wait()
            except TimeoutError:
                yield None
            continue
        seq, event = taken
        if seq <= cursor.last:
            continue  # already read from the log
        if event is not None:
            turns.note(event)
        step = cursor.fold(fold, seq, event, after)
        if step is not None:
            yield step


class ObservationSource:
    """Derives the observability events of the log for one publisher."""

    def __init__(self, js: JetStreamContext, store: EventStore, limits: RateLimitsConfig) -> None:
        self._js = js
        self._store = store
        self._limits = limits
        self.quarantine = Quarantine("publisher", prefix=store.prefix)
        """Log events this publisher skipped (`llm_es.store.quarantine`), as the views do."""

    async def derive(
        self, after: int, *, until: int | None, feed: EventFeed | None = None
    ) -> AsyncGenerator[_Step | None, None]:
        """Steps for the log events after `after` (up to `until`), None when idle a while.

        The fold starts early enough (`fold_window_start`) that its thresholds
        are exact; events up to `after` are folded without being yielded. With
        `feed` (and no `until`), the log is read only up to where the feed
        starts, then the events come from the feed; if the feed overflows (this
        publisher fell behind), the log is read again from where it stopped.
        """
        fold = ObservationFold(self._limits)
        start = await self._fold_start(after)
        cursor = _Cursor(start - 1)
        # The turn rule from where this fold starts: the turns open before are not known.
        mid_log = start > 1 or await self._store.first_seq() > 1
        turns = self.quarantine.turns = OpenTurns(started_mid_log=mid_log)
        # Bounded like the publisher's life: each round ends only on an overflow.
        while True:
            following = _Following(feed) if feed is not None and until is None else None
            try:
                end = until if following is None else following.start
                if end is None or cursor.last < end:
                    async with contextlib.aclosing(
                        self._read_log(fold, cursor, after, until=end)
                    ) as steps:
                        async for step in steps:
                            yield step
                if following is None:
                    return
                feed_steps = _read_feed(fold, cursor, after, following, turns)
                async with contextlib.aclosing(feed_steps) as steps:
                    async for step in steps:
                        yield step
                log_kv(logger, "event_feed_overflowed", level=logging.WARNING, seq=cursor.last)
            finally:
                if following is not None:
                    following.close()

    async def _read_log(
        self, fold: ObservationFold, cursor: _Cursor, after: int, *, until: int | None
    ) -> AsyncGenerator[_Step | None, None]:
        """`derive`'s steps read from the log with an ordered consumer of this publisher."""
        # A bounded hand-off: a full one holds the subscription's callback, so flow
        # control stops the server instead of memory growing.
        messages = read_bounded(
            self._js,
            self._store.stream,
            f"{self._store.prefix}.>",
            after=cursor.last,
            until=until,
            idle_seconds=IDLE_POLL_SECONDS,
            buffer=DERIVE_BUFFER,
            heartbeat_seconds=CONSUMER_HEARTBEAT_SECONDS,
        )
        async with contextlib.aclosing(messages):
            async for message in messages:
                if message is None:
                    yield None
                    continue
                seq, subject, data, stored_ns = message
                event = self.quarantine.admit(seq, subject, data, stored_ns)
                step = cursor.fold(fold, seq, event, after)
                if step is not None:
                    yield step

    async def _fold_start(self, after: int) -> int:
        """First log sequence to fold so the events after `after` come out exact."""
        if after <= 0:
            return 1
        moment = await self._event_time(after)
        if moment is None:
            return 1
        start = fold_window_start(moment)
        info = await self._js.stream_info(self._store.stream)
        low, high = max(info.state.first_seq, 1), after + 1
        # Binary search on event time (nearly sorted; the skew margin absorbs the rest).
        while low < high:
            middle = (low + high) // 2
            at = await self._event_time(middle)
            if at is None or at < start:
                low = middle + 1
            else:
                high = middle
        return low

    async def _event_time(self, seq: int) -> datetime | None:
        try:
            msg = await self._js.get_msg(self._store.stream, seq=seq, direct=True)
        except NotFoundError:
            return None
        if msg.data is None or msg.subject is None:
            return None
        try:  # a lookup out of order: no turn rule, and the log reads record the quarantine
            event = admit_event(
                seq, msg.subject, msg.data, stored_ns_of(msg.time), prefix=self._store.prefix
            )
        except UnknownEventError:
            return None
        return event.at
