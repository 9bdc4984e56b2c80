"""The event catalog: every state change llm-es makes, as immutable records.

Events are frozen msgspec Structs with past-tense names. Each carries `id` (a
uuid, also used as the JetStream `Nats-Msg-Id`, so a retried append is a
no-op), `at` (UTC time set by the writer; folds use it, never the wall clock)
and its data. The field types are what a stored event is checked against when
read (`llm_es.store.codec` holds the wire form); `EVENT_TYPES` maps the stable
type name to the class.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, ClassVar

from msgspec import Meta, Struct, field


def new_event_id() -> str:
    """A fresh event id (uuid4 hex, 32 chars: short enough for Nats-Msg-Id)."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    """The writer's clock; the only place events get their time from."""
    return datetime.now(UTC)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with `Z` (`2024-05-17T12:00:00Z`): the `Llm-Timestamp` of every
    published event and the audit's `at`, whose first 10 characters are the day."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


EventId = Annotated[str, Meta(description="uuid4 hex; also the Nats-Msg-Id of the append")]
# A stored time without an offset would be read as local time: `tz` refuses one.
EventTime = Annotated[
    datetime, Meta(tz=True, description="UTC time set by the writer (ISO 8601, `Z`)")
]

MAX_TOKENS_PER_CALL = 100_000_000
"""Most tokens one provider call, reservation or limit may count: a hundred times the
longest context window offered today. A stored event past it (or below 0) is refused on
read, so a forged one cannot wrap a sum or spend a user's budget for years."""
# The bounds below are checked when an event is read from the log (`msgspec.convert`);
# a writer builds events from values the service already checked.
Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS_PER_CALL)]
Count = Annotated[int, Meta(ge=0)]
Importance = Annotated[int, Meta(ge=1, le=10)]
Milliseconds = Annotated[float, Meta(ge=0)]
Cost = Annotated[float, Meta(ge=0)]


class Event(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields every event carries; subclasses add their data.

    Every subclass repeats `frozen=True, kw_only=True`: msgspec applies `kw_only`
    only to the fields a class declares (with it, a base's fields come first, as
    the wire form lists them), and mypy reads `frozen` from each class statement.
    """

    TYPE: ClassVar[str] = "Event"
    SCHEMA: ClassVar[int] = 1

    id: EventId = field(default_factory=new_event_id)
    at: EventTime = field(default_factory=utc_now)

    @property
    def channel_name(self) -> str | None:
        """The channel this event belongs to: its `channel`, if any (picks the subject token)."""
        channel: str | None = getattr(self, "channel", None)
        return channel

    @property
    def user_name(self) -> str | None:
        """The user this event belongs to: its `user`, if any (picks the subject token)."""
        user: str | None = getattr(self, "user", None)
        return user


class _ChannelUserEvent(Event, frozen=True, kw_only=True):
    channel: str
    user: str | None


class _TurnEvent(Event, frozen=True, kw_only=True):
    """A turn's events: a chat turn has a channel; a service completion may not."""

    channel: str | None
    user: str | None


class TurnAdmitted(_TurnEvent, frozen=True, kw_only=True):
    """A chat turn passed the rate limits; `reserved_tokens` are held until it ends."""

    TYPE: ClassVar[str] = "TurnAdmitted"
    turn_id: str
    source: str
    persona: str
    provider: str
    model: str
    message: str
    reserved_tokens: Tokens
    max_tokens: Tokens
    purpose: Annotated[
        str,
        Meta(
            description="`chat` (a channel conversation), `complete` or `summarize` "
            "(service requests)."
        ),
    ] = "chat"
    instance: Annotated[
        str, Meta(description="The llm-es instance that runs the turn (who may still end it).")
    ] = ""


class TurnRejected(_TurnEvent, frozen=True, kw_only=True):
    """A chat turn was refused by a limit; nothing was sent to a provider."""

    TYPE: ClassVar[str] = "TurnRejected"
    turn_id: str
    reason: str
    window: str
    limit: Count
    detail: str
    provider: Annotated[
        str,
        Meta(
            description="The provider the turn would have asked "
            "(empty in events recorded before 0.2)."
        ),
    ] = ""


class TurnCompleted(_TurnEvent, frozen=True, kw_only=True):
    """The provider answered an admitted turn."""

    TYPE: ClassVar[str] = "TurnCompleted"
    turn_id: str
    content: str
    provider: str
    model: str
    latency_ms: Milliseconds
    finish_reason: str | None
    fallback_from: Annotated[
        tuple[str, ...],
        Meta(
            description="Providers asked first that were down (in order); "
            "empty when the first one answered."
        ),
    ] = ()


class TurnFailed(_TurnEvent, frozen=True, kw_only=True):
    """An admitted turn ended without an answer (provider error, timeout, abandoned)."""

    TYPE: ClassVar[str] = "TurnFailed"
    turn_id: str
    error_type: str
    error: str


class TokensSpent(_TurnEvent, frozen=True, kw_only=True):
    """One provider call's token usage; settles the turn's reservation."""

    TYPE: ClassVar[str] = "TokensSpent"
    turn_id: str
    purpose: str
    provider: str
    model: str
    prompt_tokens: Tokens
    completion_tokens: Tokens
    estimated: bool
    cost: Cost | None = None


class MemoryAdded(Event, frozen=True, kw_only=True):
    """A fact was remembered in a channel."""

    TYPE: ClassVar[str] = "MemoryAdded"
    memory_id: str
    channel: str
    user_id: str | None
    content: str
    category: str
    importance: Importance

    @property
    def user_name(self) -> str | None:
        return self.user_id


class MemoryRecalled(_ChannelUserEvent, frozen=True, kw_only=True):
    """Memories were looked up; their `accessed_at` moves to this event's time."""

    TYPE: ClassVar[str] = "MemoryRecalled"
    query: str
    memory_ids: tuple[str, ...]


class MemoryForgotten(_ChannelUserEvent, frozen=True, kw_only=True):
    """A memory was removed from its channel."""

    TYPE: ClassVar[str] = "MemoryForgotten"
    memory_id: str


class PersonaSwitched(_ChannelUserEvent, frozen=True, kw_only=True):
    """A channel's persona changed."""

    TYPE: ClassVar[str] = "PersonaSwitched"
    persona: str


class ContextReset(_ChannelUserEvent, frozen=True, kw_only=True):
    """A channel's conversation context (messages and summary) was cleared."""

    TYPE: ClassVar[str] = "ContextReset"


class ContextSummarized(Event, frozen=True, kw_only=True):
    """Old messages of a channel were folded into a summary."""

    TYPE: ClassVar[str] = "ContextSummarized"
    channel: str
    summary: str
    through_seq: Count
    message_count: Count


class UserErased(Event, frozen=True, kw_only=True):
    """A user was erased (right to erasure): the keys sealing their words were destroyed.

    Appended after the keys are gone (`llm-replay erase --user`): from here on their
    messages, the answers to them and their facts read `[erased]`; every count and token
    figure stays. Readers drop their cached keys when they fold it.
    """

    TYPE: ClassVar[str] = "UserErased"
    user: str
    channels: Annotated[
        tuple[str, ...],
        Meta(
            description="Channels the user spoke in: their summaries, which mixed the "
            "user's words with others', were erased too."
        ),
    ]
    memories: Annotated[
        int, Meta(description="The user's remembered facts erased (each also forgotten).")
    ]


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        TurnAdmitted,
        TurnRejected,
        TurnCompleted,
        TurnFailed,
        TokensSpent,
        MemoryAdded,
        MemoryRecalled,
        MemoryForgotten,
        PersonaSwitched,
        ContextReset,
        ContextSummarized,
        UserErased,
    )
}
"""Stable type name -> event class; the names are part of the log's format."""
