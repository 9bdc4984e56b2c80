"""The read side the plugin consumes: KV key names, view shapes, the reader interface.

Views live in the KV bucket `llm_data`; `projections` writes them by folding
the log, and the plugin only reads them through `ViewReader`. Keys follow the
seed's names with `.` separators and encoded tokens (`llm_es.domain.tokens`).
Every view records `seq`, the last stream sequence folded into it, which
makes re-applying an event a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict

import orjson

from llm_es.domain.tokens import encode_name

if TYPE_CHECKING:
    from llm_es.domain.events import Event

BUCKET = "llm_data"
"""The views bucket until a blue/green rebuild points `ACTIVE_VIEWS_KEY` elsewhere."""

META_BUCKET = "llm_meta"
"""Small KV bucket with the blue/green pointer."""
ACTIVE_VIEWS_KEY = "views.active"
"""Key in `META_BUCKET`: `{"bucket": name, "generation": n, ...}` of the live views."""


@dataclass(frozen=True, slots=True)
class ActiveViews:
    """Which bucket holds the live views, and the pointer's KV revision (0: no pointer yet)."""

    bucket: str
    generation: int
    revision: int


def parse_active_views(raw: bytes | None, revision: int) -> ActiveViews:
    """The pointer value as stored; anything unreadable means the default bucket."""
    if raw:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("bucket"), str) and value["bucket"]:
            generation = value.get("generation")
            return ActiveViews(
                value["bucket"], generation if isinstance(generation, int) else 1, revision
            )
    return ActiveViews(BUCKET, 1, revision)


def context_key(channel: str) -> str:
    """Recent messages and summary of a channel."""
    return f"messages.{encode_name(channel)}.recent"


def memories_group(channel: str) -> str:
    """Key prefix (without the trailing dot) of a channel's memories."""
    return f"memories.{encode_name(channel)}"


def memory_key(channel: str, memory_id: str) -> str:
    """One memory of a channel."""
    return f"{memories_group(channel)}.{memory_id}"


def settings_key(channel: str) -> str:
    """Per-channel settings (persona)."""
    return f"channel.{encode_name(channel)}.settings"


def usage_key(user: str) -> str:
    """Per-user rate-limit counters and open turns."""
    return f"usage.{encode_name(user)}"


QUARANTINE_KEY = "quarantine.log"
"""The log's quarantined events as the views' fold met them (`QuarantineView`)."""


def checkpoint_key(projection: str) -> str:
    """Last stream sequence a projection has written."""
    return f"checkpoint.{projection}"


OPEN_TURNS_FIELD = "open_turns"
"""A checkpoint's field: the turns open at its sequence (turn id -> user), where a fold
that resumes from it starts (`llm_es.domain.turn_order.OpenTurns`)."""


class QuarantinedEvent(TypedDict):
    seq: int
    reason: str


class QuarantineView(TypedDict):
    """Events every fold skipped (`llm_es.store.quarantine`): how many, the first few."""

    seq: int
    """The last quarantined sequence."""
    count: int
    events: list[QuarantinedEvent]
    """The first `MAX_LISTED_IN_VIEW` of them, in log order."""


MAX_LISTED_IN_VIEW = 100


def with_quarantined(view: QuarantineView | None, seq: int, reason: str) -> QuarantineView:
    """The quarantine view after the event at `seq` was quarantined for `reason`."""
    if view is None:
        return {"seq": seq, "count": 1, "events": [{"seq": seq, "reason": reason}]}
    events = view["events"]
    if len(events) < MAX_LISTED_IN_VIEW:
        events = [*events, {"seq": seq, "reason": reason}]
    return {"seq": seq, "count": view["count"] + 1, "events": events}


class ContextMessage(TypedDict):
    role: str
    content: str
    user_id: str | None
    timestamp: str
    turn_id: str
    seq: int


class PendingTurn(TypedDict):
    user: str | None
    content: str
    timestamp: str


class ContextView(TypedDict):
    channel: str
    seq: int
    summary: str | None
    summary_seq: int
    messages: list[ContextMessage]
    pending: dict[str, PendingTurn]


class MemoryView(TypedDict):
    id: str
    channel: str
    content: str
    category: str
    importance: int
    user_id: str | None
    created_at: str
    accessed_at: str
    seq: int


class SettingsView(TypedDict):
    channel: str
    persona: str
    changed_by: str | None
    changed_at: str
    seq: int


class OpenTurn(TypedDict):
    channel: str | None
    admitted_at: str
    admitted_seq: int
    reserved_tokens: int


class UsageView(TypedDict):
    user: str
    seq: int
    day: str
    requests_today: int
    rejected_today: int
    tokens_today: int
    recent_requests: list[float]
    open_turns: dict[str, OpenTurn]
    total_requests: int
    total_tokens: int
    last_refusals: NotRequired[dict[str, float]]
    """Limit window -> time (epoch seconds) of the user's last recorded refusal by it;
    absent until the user is first refused."""


class ViewReader(Protocol):
    """What the plugin needs from the read side (implemented by `projections`)."""

    @property
    def position(self) -> int:
        """Last stream sequence included in every view (and written to KV)."""

    async def wait_for(self, seq: int) -> None:
        """Return once every view includes stream sequence `seq` (callers bound the wait)."""

    async def catch_up(self) -> int:
        """Wait until the views include everything in the log now; return that position."""

    def get(self, key: str) -> dict[str, Any] | None:
        """The current value of a view key, or None."""

    def values_under(self, group: str) -> list[dict[str, Any]]:
        """Every value whose key is `group.<last part>` (e.g. a channel's memories)."""

    def keys_under(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`."""


EventListener = Callable[[int, "Event | None"], None]
"""Called with a log sequence and its event (None: one this code cannot read)."""


class EventFeed(Protocol):
    """The log events a read side folds, handed on in process to whoever follows them.

    One read of the log per process: the event publisher follows the views'
    fold instead of a second consumer of its own, which would double the
    server's pushes and this process's decoding for every event.
    """

    def follow(self, listener: EventListener) -> tuple[int, Callable[[], None]]:
        """Call `listener` for every log event after the returned sequence, in log order,
        as it is folded (synchronously: the listener must not block); the returned
        function stops it. Events up to that sequence are the caller's to read."""


class ViewRunner(ViewReader, EventFeed, Protocol):
    """A read side that can be started and stopped by `llm-es serve`."""

    async def start(self) -> None:
        """Load the views and start following the log."""

    async def stop(self) -> None:
        """Write what was applied and stop following the log."""

    def lease_held(self) -> bool:
        """Whether this instance writes the views now (holds their lease)."""

    def projection_positions(self) -> dict[str, int]:
        """Projection name -> last log sequence its views include (for the views' lag)."""
