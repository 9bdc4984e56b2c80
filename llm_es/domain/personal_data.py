"""Which text in the log is personal data, and whose key seals it (crypto-shredding).

The log is append-only, so text that must be erasable is stored sealed: encrypted
under a key of its own subject, kept outside the log (`llm_es.store.keyring`).
Destroying the key erases every copy of the text at once (stream, views, backups of
either), while the events, their counts and token figures stay. Each sealed field
is named here with the key that seals it; everything else in an event is stored
as it is.

A sealed value stays a string: `sealed:1:<key name>:<length>:<box>`, where `length`
is the plain text's length in characters (a figure, kept after an erasure like every
other) and `box` the encrypted text (`llm_es.store.sealing`).
"""

from __future__ import annotations

from llm_es.domain.events import (
    ContextSummarized,
    Event,
    MemoryAdded,
    MemoryRecalled,
    TurnAdmitted,
    TurnCompleted,
    UserErased,
)
from llm_es.domain.tokens import encode_name, encode_optional

ERASED = "[erased]"
"""What a reader shows for sealed text whose key is destroyed (forgotten or erased)."""

SEALED_PREFIX = "sealed:1:"


def memory_key_name(channel: str, memory_id: str) -> str:
    """The key sealing one remembered fact: destroyed when the fact is forgotten."""
    return f"memory.{encode_name(channel)}.{memory_id}"


def user_key_name(user: str | None) -> str:
    """The key sealing what a user said and was answered: destroyed by their erasure."""
    return f"user.{encode_optional(user)}"


def summary_key_name(channel: str) -> str:
    """The key sealing a channel's summaries, which mix every speaker's words: destroyed
    when any of them is erased (the summary is dropped, the next one starts afresh)."""
    return f"summary.{encode_name(channel)}"


def erased_key_names(event: UserErased) -> list[str]:
    """The keys a user's erasure destroyed, besides those of their facts (each forgotten)."""
    return [user_key_name(event.user), *(summary_key_name(c) for c in event.channels)]


SealingPlan = tuple[str, tuple[str, ...]]
"""(key name, names of the event's text fields sealed with it)."""


def sealing_plan(event: Event) -> SealingPlan | None:
    """Which fields of `event` are sealed, and under which key; None: nothing is."""
    if isinstance(event, MemoryAdded):
        return memory_key_name(event.channel, event.memory_id), ("content",)
    if isinstance(event, TurnAdmitted):
        return user_key_name(event.user), ("message",)
    if isinstance(event, TurnCompleted):
        return user_key_name(event.user), ("content",)
    if isinstance(event, MemoryRecalled):
        return user_key_name(event.user), ("query",)
    if isinstance(event, ContextSummarized):
        return summary_key_name(event.channel), ("summary",)
    return None


def sealed_parts(text: str) -> tuple[str, int, str] | None:
    """(key name, plain length, box) of a sealed value; None when `text` is not sealed."""
    if not text.startswith(SEALED_PREFIX):
        return None
    name, _, rest = text[len(SEALED_PREFIX) :].partition(":")
    length, colon, box = rest.partition(":")
    if not (name and colon and length.isdigit()):
        return None
    return name, int(length), box


def sealed_value(key_name: str, length: int, box: str) -> str:
    """The stored form of text sealed under `key_name` (see the module's docstring)."""
    return f"{SEALED_PREFIX}{key_name}:{length}:{box}"


def text_length(text: str) -> int:
    """The length of the text a field holds, sealed or not (and erased or not)."""
    parts = sealed_parts(text)
    return len(text) if parts is None else parts[1]
