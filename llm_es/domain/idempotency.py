"""Ids derived from a caller's `request_id`, so a retried request names the same turn and events.

A request that carries a `request_id` gets a turn id (or a memory id) computed
from it and the user; the turn's events get ids computed from the turn id. The
stream dedupes appends by `Nats-Msg-Id` (the event id) within its duplicate
window, so a retry appends nothing new and finds the first attempt's events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from llm_es.domain.events import Event

ID_LENGTH = 32
"""Hex digits of a derived id: as long as a uuid4 hex, short enough for `Nats-Msg-Id`."""
MEMORY_ID_LENGTH = 8
"""Hex digits of a memory id (`!chat forget <id>` is typed by people)."""

_SEPARATOR = "\x1f"


def derived_id(*parts: str, length: int = ID_LENGTH) -> str:
    """A stable hex id of `parts` (sha256): the same parts, the same id, on any instance."""
    digest = hashlib.sha256(_SEPARATOR.join(parts).encode()).hexdigest()
    return digest[:length]


def request_turn_id(purpose: str, user: str, request_id: str) -> str:
    """The turn id of a request with a `request_id` (per user and kind of turn)."""
    return derived_id("turn", purpose, user, request_id)


def request_memory_id(channel: str, user: str | None, request_id: str) -> str:
    """The memory id of a `remember` with a `request_id`."""
    return derived_id("memory", channel, user or "", request_id, length=MEMORY_ID_LENGTH)


def request_event_id(channel: str, user: str | None, request_id: str) -> str:
    """The event id of a one-event command with a `request_id` (a `remember`)."""
    return derived_id("event", channel, user or "", request_id)


def turn_event_id(turn_id: str, role: str) -> str:
    """The id of a turn's event in `role` ("decision", "end", "spent.0", ...)."""
    return derived_id(turn_id, role)


def with_turn_ids(turn_id: str, spends: Sequence[Event], end: Event) -> list[Event]:
    """A turn's closing events with derived ids: its spends in order, then its end.

    An end appended twice (a retry, a resend after a reconnect) is stored once.
    """
    named = [
        msgspec.structs.replace(spend, id=turn_event_id(turn_id, f"spent.{index}"))
        for index, spend in enumerate(spends)
    ]
    return [*named, msgspec.structs.replace(end, id=turn_event_id(turn_id, "end"))]
