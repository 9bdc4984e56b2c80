"""The event catalog: every state change llm-es makes, as immutable records.

Events are frozen dataclasses with past-tense names. Each carries `id` (a
uuid, also used as the JetStream `Nats-Msg-Id`, so a retried append is a
no-op), `at` (UTC time set by the writer; folds use it, never the wall clock)
and its data. `EVENT_TYPES` maps the stable type name to the class; the wire
form lives in `llm_es.store.codec`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar


def new_event_id() -> str:
    """A fresh event id (uuid4 hex, 32 chars: short enough for Nats-Msg-Id)."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    """The writer's clock; the only place events get their time from."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Fields every event carries; subclasses add their data."""

    TYPE: ClassVar[str] = "Event"
    SCHEMA: ClassVar[int] = 1

    id: str = field(default_factory=new_event_id)
    at: datetime = field(default_factory=utc_now)

    @property
    def channel_name(self) -> str | None:
        """The channel this event belongs to (None for none); picks the subject token."""
        return None

    @property
    def user_name(self) -> str | None:
        """The user this event belongs to (None for none); picks the subject token."""
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class _ChannelUserEvent(Event):
    channel: str
    user: str | None

    @property
    def channel_name(self) -> str | None:
        return self.channel

    @property
    def user_name(self) -> str | None:
        return self.user


@dataclass(frozen=True, slots=True, kw_only=True)
class _TurnEvent(Event):
    """A turn's events: a chat turn has a channel; a service completion may not."""

    channel: str | None
    user: str | None

    @property
    def channel_name(self) -> str | None:
        return self.channel

    @property
    def user_name(self) -> str | None:
        return self.user


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnAdmitted(_TurnEvent):
    """A chat turn passed the rate limits; `reserved_tokens` are held until it ends."""

    TYPE: ClassVar[str] = "TurnAdmitted"
    turn_id: str
    source: str
    persona: str
    provider: str
    model: str
    message: str
    reserved_tokens: int
    max_tokens: int
    purpose: str = "chat"
    """`chat` (a channel conversation), `complete` or `summarize` (service requests)."""
    instance: str = ""
    """The llm-es instance that runs the turn (who may still end it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnRejected(_TurnEvent):
    """A chat turn was refused by a limit; nothing was sent to a provider."""

    TYPE: ClassVar[str] = "TurnRejected"
    turn_id: str
    reason: str
    window: str
    limit: int
    detail: str
    provider: str = ""
    """The provider the turn would have asked (empty in events recorded before 0.2)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnCompleted(_TurnEvent):
    """The provider answered an admitted turn."""

    TYPE: ClassVar[str] = "TurnCompleted"
    turn_id: str
    content: str
    provider: str
    model: str
    latency_ms: float
    finish_reason: str | None
    fallback_from: tuple[str, ...] = ()
    """Providers asked first that were down (in order); empty when the first one answered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnFailed(_TurnEvent):
    """An admitted turn ended without an answer (provider error, timeout, abandoned)."""

    TYPE: ClassVar[str] = "TurnFailed"
    turn_id: str
    error_type: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TokensSpent(_TurnEvent):
    """One provider call's token usage; settles the turn's reservation."""

    TYPE: ClassVar[str] = "TokensSpent"
    turn_id: str
    purpose: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    cost: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryAdded(Event):
    """A fact was remembered in a channel."""

    TYPE: ClassVar[str] = "MemoryAdded"
    memory_id: str
    channel: str
    user_id: str | None
    content: str
    category: str
    importance: int

    @property
    def channel_name(self) -> str | None:
        return self.channel

    @property
    def user_name(self) -> str | None:
        return self.user_id


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryRecalled(_ChannelUserEvent):
    """Memories were looked up; their `accessed_at` moves to this event's time."""

    TYPE: ClassVar[str] = "MemoryRecalled"
    query: str
    memory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryForgotten(_ChannelUserEvent):
    """A memory was removed from its channel."""

    TYPE: ClassVar[str] = "MemoryForgotten"
    memory_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PersonaSwitched(_ChannelUserEvent):
    """A channel's persona changed."""

    TYPE: ClassVar[str] = "PersonaSwitched"
    persona: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextReset(_ChannelUserEvent):
    """A channel's conversation context (messages and summary) was cleared."""

    TYPE: ClassVar[str] = "ContextReset"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextSummarized(Event):
    """Old messages of a channel were folded into a summary."""

    TYPE: ClassVar[str] = "ContextSummarized"
    channel: str
    summary: str
    through_seq: int
    message_count: int

    @property
    def channel_name(self) -> str | None:
        return self.channel


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
    )
}
"""Stable type name -> event class; the names are part of the log's format."""

TURN_END_TYPES = frozenset({"TurnCompleted", "TurnFailed"})
