"""The dashboard's live tail: each folded event handed to its watchers, then a short line.

Lines name an event's type, time, channel, user and a few figures (provider,
tokens, error type, latency), never a message's text; the page's connection
makes them, so the fold only hands events on. The last `RECENT_LINES` events
are kept for a page that opens; each watcher has a bounded queue and one that
falls behind is dropped (its page reconnects and starts again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llm_es.domain.events import (
    Event,
    MemoryAdded,
    PersonaSwitched,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
    iso_utc,
)

RECENT_LINES = 200
WATCHER_QUEUE = 512
"""Lines a watcher may be behind before it is dropped."""
MAX_WATCHERS = 16
"""Open tails at once; one more is refused (503) so pages cannot pile up connections."""


class TooManyWatchers(Exception):
    """`MAX_WATCHERS` tails are open already."""


def tail_line(seq: int, event: Event) -> dict[str, Any]:
    """What the tail shows of one event (no message text, no memory content)."""
    line: dict[str, Any] = {
        "seq": seq,
        "type": event.TYPE,
        "at": iso_utc(event.at),
        "channel": event.channel_name,
        "user": event.user_name,
    }
    turn_id = getattr(event, "turn_id", None)
    if turn_id is not None:
        line["turn_id"] = turn_id
    if isinstance(event, TurnAdmitted):
        line.update(provider=event.provider, model=event.model, purpose=event.purpose)
    elif isinstance(event, TurnCompleted):
        line.update(provider=event.provider, model=event.model, latency_ms=event.latency_ms)
    elif isinstance(event, TurnFailed):
        line.update(error_type=event.error_type)
    elif isinstance(event, TurnRejected):
        line.update(window=event.window, limit=event.limit)
    elif isinstance(event, TokensSpent):
        line.update(
            provider=event.provider,
            model=event.model,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
        )
    elif isinstance(event, MemoryAdded):
        line.update(category=event.category)
    elif isinstance(event, PersonaSwitched):
        line.update(persona=event.persona)
    return line


@dataclass(frozen=True, slots=True)
class TailFilter:
    """Which lines a watcher wants (None: any)."""

    channel: str | None = None
    user: str | None = None
    type: str | None = None

    def matches(self, event: Event) -> bool:
        return (
            (self.channel is None or event.channel_name == self.channel)
            and (self.user is None or event.user_name == self.user)
            and (self.type is None or self.type == event.TYPE)
        )


Entry = tuple[int, Event]
"""A log sequence and its event: made a line (`tail_line`) by the page's connection."""


class _Watcher:
    def __init__(self, wanted: TailFilter) -> None:
        self.wanted = wanted
        self.queue: asyncio.Queue[Entry | None] = asyncio.Queue(WATCHER_QUEUE + 1)
        self.open = True

    def offer(self, entry: Entry | None) -> None:
        if not self.open:
            return
        if entry is None or self.queue.qsize() >= WATCHER_QUEUE:
            self.open = False
            self.queue.put_nowait(None)  # the one slot kept for the end
        elif self.wanted.matches(entry[1]):
            self.queue.put_nowait(entry)


class LiveTail:
    """Recent lines and the watchers of new ones."""

    def __init__(self) -> None:
        self.recent: deque[Entry] = deque(maxlen=RECENT_LINES)
        self._watchers: set[_Watcher] = set()

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def publish(self, seq: int, event: Event) -> None:
        """One folded event (synchronous: it runs inside the fold, so it only hands it on)."""
        entry = (seq, event)
        self.recent.append(entry)
        for watcher in self._watchers:
            watcher.offer(entry)

    @contextlib.contextmanager
    def watch(self, wanted: TailFilter) -> Iterator[asyncio.Queue[Entry | None]]:
        """A queue of the matching recent events, then each new one; None ends it."""
        if len(self._watchers) >= MAX_WATCHERS:
            raise TooManyWatchers(f"{MAX_WATCHERS} live tails are open already")
        watcher = _Watcher(wanted)
        for entry in list(self.recent)[-WATCHER_QUEUE // 2 :]:
            watcher.offer(entry)
        self._watchers.add(watcher)
        try:
            yield watcher.queue
        finally:
            self._watchers.discard(watcher)

    def close(self) -> None:
        """End every watcher's stream."""
        for watcher in self._watchers:
            watcher.offer(None)
