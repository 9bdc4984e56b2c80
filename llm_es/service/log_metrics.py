"""The log-derived counters: turns, tokens and events, counted from the views' fold.

`LogCounts` follows the plugin's `EventFeed`, so it counts exactly what the log
records, once per event, in log order, with no read of its own. It starts at
the position the views had reached when it began following (counters start at
zero when the instance starts, as Prometheus expects of a counter), and every
instance folds the whole log, so each one counts every instance's turns.
"""

from __future__ import annotations

from collections.abc import Callable

from llm_es.domain.events import (
    Event,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
)
from llm_es.domain.views import EventFeed
from llm_es.metrics import UNKNOWN, PluginMetrics

UNREADABLE = "unreadable"
"""The `type` label of an event this code cannot read."""

MAX_OPEN_TURNS = 100_000
"""Open turns whose purpose is remembered; past it the oldest is forgotten (its end is
counted with purpose unknown), so a log of turns that never end cannot grow memory."""


class LogCounts:
    """Counts turns by outcome and purpose, tokens and appended events as they are folded."""

    def __init__(self, metrics: PluginMetrics) -> None:
        self._metrics = metrics
        self._purposes: dict[str, str] = {}
        """turn id -> purpose of the turns admitted and not yet ended (the end events
        do not repeat it)."""
        self._stop: Callable[[], None] | None = None

    def follow(self, feed: EventFeed) -> int:
        """Count every event the feed folds from now on; returns the position it starts after."""
        position, self._stop = feed.follow(self.count)
        return position

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def count(self, seq: int, event: Event | None) -> None:
        """One folded event (synchronous and cheap: it runs inside the fold)."""
        del seq
        metrics = self._metrics
        metrics.events_appended.labels(UNREADABLE if event is None else event.TYPE).inc()
        if isinstance(event, TurnAdmitted):
            purposes = self._purposes
            if len(purposes) >= MAX_OPEN_TURNS:
                del purposes[next(iter(purposes))]
            purposes[event.turn_id] = event.purpose
        elif isinstance(event, TurnCompleted):
            purpose = self._purposes.pop(event.turn_id, UNKNOWN)
            metrics.turns.labels("completed", "", purpose).inc()
        elif isinstance(event, TurnFailed):
            purpose = self._purposes.pop(event.turn_id, UNKNOWN)
            metrics.turns.labels("failed", event.error_type, purpose).inc()
        elif isinstance(event, TurnRejected):
            # A rejection records no purpose (and follows no admission).
            metrics.turns.labels("rejected", event.window, UNKNOWN).inc()
        elif isinstance(event, TokensSpent):
            tokens = metrics.tokens
            tokens.labels(event.provider, event.model, "prompt").inc(event.prompt_tokens)
            tokens.labels(event.provider, event.model, "completion").inc(event.completion_tokens)
