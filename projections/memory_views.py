"""The in-memory fold of the log into views: the values, the position, and who waits for it.

`MemoryViews` applies each event to every projection whose checkpoint is
behind it (a value that already records a sequence >= the event's is left
alone, so replays are harmless), serves the `ViewReader` reads from memory and
wakes the waiters of a position as soon as it is folded. Writing the values
to KV is `projections.bucket_views.BucketViews`'s job, told of each change
through `_changed` and `_folded`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Sequence
from typing import Any, cast

from nats.aio.msg import Msg

from llm_es.domain.events import Event
from llm_es.domain.turn_order import OpenTurns
from llm_es.domain.views import QUARANTINE_KEY, EventListener, QuarantineView, with_quarantined
from llm_es.store.log import EventStore
from llm_es.store.quarantine import Quarantine
from projections.base import Projection, View

logger = logging.getLogger(__name__)

_WAITER_ORDER = itertools.count()
"""Tie-breaker of waiters on one sequence; shared, so waiters can move between buckets."""


class MemoryViews:
    """The views of one bucket as this process has folded them, and their waiters."""

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        on_event: EventListener | None,
    ) -> None:
        self._store = store
        self._projections = list(projections)
        self._on_event = on_event
        """Told of every event folded, after the fold and its waiters (see `EventFeed`)."""
        self._values: dict[str, View] = {}
        self._groups: dict[str, set[str]] = {}
        self._checkpoints: dict[str, int] = {}
        """Projection name -> the sequence its stored views already include."""
        self._applied = 0
        self.quarantine = Quarantine("views", prefix=store.prefix, turns=OpenTurns())
        """Events this fold skipped (`llm_es.store.quarantine`): the same a rebuild skips.
        Its open turns are those at `position` (restored from a checkpoint on start)."""
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []

    @property
    def position(self) -> int:
        return self._applied

    async def wait_for(self, seq: int) -> None:
        if self._applied >= seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(_WAITER_ORDER), future))
        await future

    async def catch_up(self) -> int:
        last = await self._store.last_seq()
        await self.wait_for(last)
        return last

    def get(self, key: str) -> dict[str, Any] | None:
        return self._values.get(key)

    def values_under(self, group: str) -> list[dict[str, Any]]:
        return [self._values[k] for k in sorted(self._groups.get(group, ()))]

    def keys_under(self, prefix: str) -> list[str]:
        return sorted(k for k in self._values if k.startswith(prefix))

    def snapshot(self) -> dict[str, View]:
        """Every view value (checkpoints excluded), for comparisons and tools."""
        return {k: v for k, v in self._values.items() if not k.startswith("checkpoint.")}

    def take_waiters(self, other: MemoryViews) -> None:
        """Adopt `other`'s pending waiters (a blue/green switch), waking those already met."""
        for waiter in other._waiters:
            heapq.heappush(self._waiters, waiter)
        other._waiters = []
        self._wake(self._applied)

    def cancel_waiters(self) -> None:
        for _, _, future in self._waiters:
            if not future.done():
                future.cancel()
        self._waiters.clear()

    # ------------------------------------------------------------ folding

    async def _on_message(self, seq: int, pending: int, stored_ns: int, msg: Msg) -> None:
        # `follow` hands over each sequence once, after where the fold started.
        # An event that is not admissible must not stop every view: it is quarantined.
        admitted = self.quarantine.admit_or_reason(seq, msg.subject, msg.data, stored_ns)
        event: Event | None = None
        if isinstance(admitted, str):
            self._quarantined(seq, admitted)
        else:
            event = admitted
            self._apply(event, seq)
        self._applied = seq
        self._wake(seq)
        if self._on_event is not None:
            self._on_event(seq, event)
        self._folded()

    def _quarantined(self, seq: int, reason: str) -> None:
        """Log and count the event at `seq` as quarantined, in the views too (`QUARANTINE_KEY`)."""
        self.quarantine.record(seq, reason)
        current = cast(QuarantineView | None, self._values.get(QUARANTINE_KEY))
        if current is not None and current["seq"] >= seq:
            return  # folded again after a restart: the stored view has it
        self._store_value(QUARANTINE_KEY, dict(with_quarantined(current, seq, reason)))
        self._changed(QUARANTINE_KEY, seq)

    def _apply(self, event: Any, seq: int) -> None:
        for projection in self._projections:
            if seq <= self._checkpoints[projection.name]:
                continue
            for key in projection.keys_for(event):
                current = self._values.get(key)
                if current is not None and current.get("seq", 0) >= seq:
                    continue
                updated = projection.apply(key, current, event, seq)
                if updated is None:
                    if current is not None:
                        self._drop_value(key)
                        self._changed(key, seq)
                else:
                    self._store_value(key, updated)
                    self._changed(key, seq)

    def _store_value(self, key: str, value: View) -> None:
        self._values[key] = value
        group, _, _ = key.rpartition(".")
        self._groups.setdefault(group, set()).add(key)

    def _drop_value(self, key: str) -> None:
        self._values.pop(key, None)
        group, _, _ = key.rpartition(".")
        members = self._groups.get(group)
        if members is not None:
            members.discard(key)
            if not members:
                del self._groups[group]

    def _wake(self, position: int) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= position:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)

    def _changed(self, key: str, seq: int) -> None:
        """`key` changed (or went) at `seq`: a hook for whoever writes the views."""

    def _folded(self) -> None:
        """An event was folded: a hook for whoever writes the views."""
