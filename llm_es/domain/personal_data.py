"""Which text in the log is personal data, and whose key seals it (crypto-shredding).

The log is append-only, so text that must be erasable is stored sealed: encrypted
under a key of its own subject, kept outside the log (`llm_es.store.keyring`).
Destroying the key erases every copy of the text at once (stream, views, backups of
either), while the events, their counts and token figures stay. Each sealed field
is named here with the key that seals it; everything else in an event is stored
as it is.
"""

from __future__ import annotations

from llm_es.domain.events import Event, MemoryAdded
from llm_es.domain.tokens import encode_name

ERASED = "[erased]"
"""What a reader shows for sealed text whose key is destroyed (forgotten or erased)."""

MEMORY_KEY_PREFIX = "memory"


def memory_key_name(channel: str, memory_id: str) -> str:
    """The key sealing one remembered fact: destroyed when the fact is forgotten."""
    return f"{MEMORY_KEY_PREFIX}.{encode_name(channel)}.{memory_id}"


SealingPlan = tuple[str, tuple[str, ...]]
"""(key name, names of the event's text fields sealed with it)."""


def sealing_plan(event: Event) -> SealingPlan | None:
    """Which fields of `event` are sealed, and under which key; None: nothing is."""
    if isinstance(event, MemoryAdded):
        return memory_key_name(event.channel, event.memory_id), ("content",)
    return None
