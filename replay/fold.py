"""Folding the log in memory into view values, the way the view runner does from an empty bucket.

The runner also skips events already in a value (`seq`) and per-projection
checkpoints; from sequence 1 into empty views neither ever applies, so this
is the same fold without them. The values are this fold's own, so it folds
them in place (`Projection.fold`) instead of copying each one per event.
Events `llm_es.store.quarantine` refuses are skipped and counted, as the
runner skips them.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import aclosing
from typing import cast

from llm_es.config import Config
from llm_es.domain.events import Event
from llm_es.domain.turn_order import OpenTurns
from llm_es.domain.views import QUARANTINE_KEY, QuarantineView, with_quarantined
from llm_es.store.quarantine import Quarantine
from projections.base import Projection, View
from projections.runner import default_projections
from replay.errors import UsageError
from replay.progress import Progress
from replay.reading import EventLog, LogSelection, RawEvent

MAX_SKIPS_KEPT = 20
FOLD_GC_THRESHOLD = 200_000
"""Allocations between young-generation collections while folding (Python's default: 700)."""


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage rarely while folding: 15-20% faster.

    A fold builds many long-lived dicts and no reference cycles, so frequent
    collections only re-scan views that cannot be garbage.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(FOLD_GC_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def select_projections(config: Config, names: Sequence[str] = ()) -> list[Projection]:
    """The plugin's projections (as `config` sets them up), or only the named ones."""
    available = default_projections(config)
    if not names:
        return available
    by_name = {p.name: p for p in available}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UsageError(
            f"unknown projection {unknown[0]!r}: choose from {', '.join(sorted(by_name))}"
        )
    return [by_name[n] for n in dict.fromkeys(names)]


class LogFold:
    """View values folded from events in log order; `position` is the last sequence seen."""

    def __init__(
        self,
        projections: Sequence[Projection],
        *,
        reader: str = "replay",
        started_mid_log: bool = False,
    ) -> None:
        """`started_mid_log`: the log's first events are gone (retention), so the turns
        open where it starts are not known (`llm_es.domain.turn_order`)."""
        self.projections = list(projections)
        self.values: dict[str, View] = {}
        self.removed: dict[str, int] = {}
        """Keys a later event deleted, with that event's sequence."""
        self.position = 0
        self.events = 0
        self.quarantine = Quarantine(reader, turns=OpenTurns(started_mid_log=started_mid_log))
        """Events skipped as not admissible, as the plugin's views skip them (the turn
        rule included: a fold reads in log order)."""
        self.skips: list[tuple[int, str]] = []
        """The first few skipped events: (sequence, why)."""
        self._routes: dict[type[Event], list[Projection]] = {}

    def projections_for(self, event_type: type[Event]) -> list[Projection]:
        """The projections an event of this class may concern (`Projection.event_types`)."""
        route = self._routes.get(event_type)
        if route is None:
            route = self._routes[event_type] = [
                p
                for p in self.projections
                if any(issubclass(event_type, wanted) for wanted in p.event_types)
            ]
        return route

    @property
    def open_turns(self) -> OpenTurns:
        """The turns open at `position` (for the checkpoints of a rebuild)."""
        assert self.quarantine.turns is not None
        return self.quarantine.turns

    def apply(self, event: Event, seq: int) -> None:
        """Fold one event (stream sequence `seq`) into every view it concerns."""
        values = self.values
        for projection in self.projections_for(type(event)):
            for key in projection.keys_for(event):
                current = values.get(key)
                updated = projection.fold(key, current, event, seq)
                if updated is None:
                    if current is not None:
                        del values[key]
                        self.removed[key] = seq
                else:
                    values[key] = updated
        self.position = seq
        self.events += 1

    def feed(self, batch: Iterable[RawEvent]) -> None:
        """Decode and fold a batch of stored events."""
        values = self.values
        removed = self.removed
        routes = self._routes
        seq = self.position
        folded = 0
        admit = self.quarantine.admit_or_reason
        for seq, subject, data, stored_ns in batch:
            event = admit(seq, subject, data, stored_ns)
            if isinstance(event, str):
                self.skip(seq, event)
                continue
            # The body of `apply`, inlined: this loop is the rebuild's hot path.
            projections = routes.get(type(event)) or self.projections_for(type(event))
            for projection in projections:
                for key in projection.keys_for(event):
                    current = values.get(key)
                    updated = projection.fold(key, current, event, seq)
                    if updated is None:
                        if current is not None:
                            del values[key]
                            removed[key] = seq
                    else:
                        values[key] = updated
            folded += 1
        self.position = max(self.position, seq)
        self.events += folded

    @property
    def skipped(self) -> int:
        """How many events were quarantined."""
        return self.quarantine.count

    def skip(self, seq: int, why: str) -> None:
        """Count an event that is not admissible (the runner skips it, and lists it in the
        views' `QUARANTINE_KEY`, too)."""
        self.position = max(self.position, seq)
        self.quarantine.record(seq, why)
        current = cast(QuarantineView | None, self.values.get(QUARANTINE_KEY))
        self.values[QUARANTINE_KEY] = dict(with_quarantined(current, seq, why))
        if len(self.skips) < MAX_SKIPS_KEPT:
            self.skips.append((seq, why))


async def fold_log(
    log: EventLog,
    projections: Sequence[Projection],
    end: int,
    *,
    progress: Progress | None = None,
) -> LogFold:
    """Fold log sequences 1..`end` into memory (a long log is read in a child process)."""
    if end < 1:
        return LogFold(projections)
    selection = LogSelection(to_seq=end)
    fold = LogFold(projections, started_mid_log=await log.starts_mid_log(selection))
    with fewer_collections():
        async with aclosing(log.read_all(selection)) as batches:
            async for batch in batches:
                fold.feed(batch)
                if progress is not None:
                    progress.done = fold.position
    return fold
