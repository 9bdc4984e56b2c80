"""The dashboard's figures: the audit fold of the whole log, kept up to date in memory.

`Dashboard.follow` takes every event the views fold from then on (in process,
no read of its own) and reads the older ones once, in the background, from
the log (one ordered read: the turn rule needs the log's order). On the turn
path an event is only set aside; the fold runs every `FOLD_SECONDS` and before
any answer, so answers are exact and turns do not wait for it. Both go
through `UsageDays`, the fold `llm-replay audit` uses, so the JSON here
equals the audit's numbers. Answers are built on the loop from memory; the
views' lag needs one stream-info request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import nats.errors
from nats.js import JetStreamContext

from llm_es import charts
from llm_es.domain.audit import AUDITED_TYPES, audit_body
from llm_es.domain.events import Event, TurnCompleted, TurnFailed
from llm_es.domain.turn_order import OpenTurns
from llm_es.domain.usage_days import USAGE_GROUPINGS, UsageDays, day_range
from llm_es.domain.views import EventFeed
from llm_es.errors import LLMESError
from llm_es.logs import log_kv
from llm_es.service.live_tail import LiveTail
from llm_es.store.follow import read_bounded
from llm_es.store.log import READ_BUFFER, EventStore, LogSize
from llm_es.store.quarantine import Quarantine

logger = logging.getLogger("llm_es.service.dashboard")

CHARTED_TYPES = frozenset((*AUDITED_TYPES, TurnCompleted.TYPE, TurnFailed.TYPE))
KEEP_DAYS = 62
"""Days kept in memory: the 30 charted and the whole of this month, with room to spare."""
CHART_DAYS = 30
TOP_USERS = 10
FOLD_SECONDS = 1.0
"""How often the events set aside are folded when no one asks."""
MAX_PENDING = 10_000
"""Events set aside past which they are folded at once (memory stays bounded)."""
HISTORY_IDLE_SECONDS = 10.0
"""Longest the history read waits for the next event it knows is there."""
LAG_SECONDS = 2.0
"""Longest `/api/lag` waits for the log's size."""


class BadQuery(ValueError):
    """A query parameter the dashboard cannot answer (answered with 400)."""


class Dashboard:
    """Usage per day, top users, errors, latency, lag and the live tail, from the log."""

    def __init__(
        self,
        store: EventStore,
        js: JetStreamContext,
        *,
        projection_positions: Callable[[], dict[str, int]],
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ) -> None:
        self._store = store
        self._js = js
        self._positions = projection_positions
        self._today = today
        self.days = UsageDays(keep_days=KEEP_DAYS)
        self.tail = LiveTail()
        self.loaded_up_to: int | None = None
        """The log position the history read covers once done (None: still reading)."""
        self._pending: list[tuple[int, Event]] = []
        self._stop: Callable[[], None] | None = None
        self._history: asyncio.Task[None] | None = None
        self._folder: asyncio.Task[None] | None = None

    def follow(self, feed: EventFeed) -> None:
        """Fold every event from now on, and read the log up to here in the background."""
        self.days.forget_before(self._today())
        position, self._stop = feed.follow(self._fold)
        self._history = asyncio.create_task(self._read_history(position), name="dashboard-history")
        self._folder = asyncio.create_task(self._fold_now_and_then(), name="dashboard-fold")

    async def stop(self) -> None:
        self.tail.close()
        if self._stop is not None:
            self._stop()
            self._stop = None
        for task in (self._history, self._folder):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._history = self._folder = None

    def _fold(self, seq: int, event: Event | None) -> None:
        """One event the views fold: set aside (this runs inside the views' fold)."""
        if event is None:
            return
        if event.TYPE in CHARTED_TYPES:
            self._pending.append((seq, event))
            if len(self._pending) >= MAX_PENDING:
                self.fold_pending()
        self.tail.publish(seq, event)

    def fold_pending(self) -> None:
        """Fold the events set aside into the per-day sums."""
        pending, self._pending = self._pending, []
        count = self.days.count
        for seq, event in pending:
            count(seq, audit_body(event))

    async def _fold_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(FOLD_SECONDS)
            self.fold_pending()

    async def _read_history(self, position: int) -> None:
        """Fold the log up to `position` into the days: one ordered read, the charted
        types picked by their subject's last token, each event admitted as the views
        admit it (the turn rule included, so it is read in log order)."""
        if position == 0:
            self.loaded_up_to = position
            return
        prefix = self._store.prefix
        try:
            quarantine = Quarantine(
                "dashboard",
                prefix=prefix,
                turns=OpenTurns(started_mid_log=await self._store.first_seq() > 1),
            )
            messages = read_bounded(
                self._js,
                self._store.stream,
                f"{prefix}.>",
                after=0,
                until=position,
                idle_seconds=HISTORY_IDLE_SECONDS,
                buffer=READ_BUFFER,
            )
            async with contextlib.aclosing(messages):
                async for message in messages:
                    if message is None:
                        raise TimeoutError(f"no event in {HISTORY_IDLE_SECONDS} s")
                    seq, subject, data, stored_ns = message
                    if subject.rpartition(".")[2] not in CHARTED_TYPES:
                        continue
                    event = quarantine.admit_or_reason(seq, subject, data, stored_ns)
                    if not isinstance(event, str):  # else quarantined: the views skip it too
                        self.days.count(seq, audit_body(event))
        except (LLMESError, TimeoutError, nats.errors.Error) as exc:
            log_kv(logger, "dashboard_history_failed", level=logging.WARNING, error=repr(exc))
            return
        self.loaded_up_to = position
        log_kv(logger, "dashboard_history_read", position=position, events=self.days.events)

    def _chart_days(self, query: dict[str, str]) -> list[str]:
        self.fold_pending()
        text = query.get("days", str(CHART_DAYS))
        if not text.isdigit() or not 1 <= int(text) <= CHART_DAYS:
            raise BadQuery(f"days: a whole number from 1 to {CHART_DAYS}, not {text!r}")
        today = self._today()
        self.days.forget_before(today)
        return day_range(today, int(text))

    def _status(self) -> dict[str, Any]:
        return {"loaded_up_to": self.loaded_up_to, "last_seq": self.days.last_seq}

    def usage(self, query: dict[str, str]) -> dict[str, Any]:
        """Requests, rejections and tokens per day, stacked by `by` (provider or model)."""
        by = query.get("by", "provider")
        if by not in USAGE_GROUPINGS:
            raise BadQuery(f"by: choose from {', '.join(USAGE_GROUPINGS)}, not {by!r}")
        per_day = self.days.per_day(by, self._chart_days(query))
        return {**per_day, **self._status(), "svg": charts.usage_chart(per_day)}

    def users(self, query: dict[str, str]) -> dict[str, Any]:
        """The top users by tokens today and this month (UTC), as `llm-replay audit` ranks."""
        limit_text = query.get("limit", str(TOP_USERS))
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            raise BadQuery(f"limit: a whole number from 1 to 100, not {limit_text!r}")
        self.fold_pending()
        today = self._today()
        self.days.forget_before(today)
        month = day_range(today, today.day)
        limit = int(limit_text)
        return {
            "today": today.isoformat(),
            "month": today.isoformat()[:7],
            "top_today": [r.as_dict() for r in self.days.top_users([month[-1]], limit)],
            "top_month": [r.as_dict() for r in self.days.top_users(month, limit)],
            **self._status(),
        }

    def errors(self, query: dict[str, str]) -> dict[str, Any]:
        """Failed turns by error type and rejections by window, per day."""
        errors = self.days.errors_per_day(self._chart_days(query))
        return {**errors, **self._status(), "svg": charts.errors_chart(errors)}

    def latency(self, query: dict[str, str]) -> dict[str, Any]:
        """Completed turns' latency p50/p99 per day (from `TurnCompleted.latency_ms`)."""
        latency = self.days.latency_per_day(self._chart_days(query))
        return {**latency, **self._status(), "svg": charts.latency_chart(latency)}

    async def lag(self) -> dict[str, Any]:
        """Each projection's position and how far behind the log's end it is."""
        size: LogSize | None = None
        try:
            async with asyncio.timeout(LAG_SECONDS):
                size = await self._store.size()
        except (LLMESError, TimeoutError, nats.errors.Error) as exc:
            log_kv(logger, "dashboard_lag_failed", level=logging.WARNING, error=repr(exc))
        positions = self._positions()
        return {
            "log_end": None if size is None else size.last_seq,
            "projections": {
                name: {
                    "position": position,
                    "lag": None if size is None else max(0, size.last_seq - position),
                }
                for name, position in sorted(positions.items())
            },
        }
