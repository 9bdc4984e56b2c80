"""Memories view: one key per remembered fact of a channel; forgotten ones are gone."""

from __future__ import annotations

from llm_es.domain.events import Event, MemoryAdded, MemoryForgotten, MemoryRecalled
from llm_es.domain.views import MemoryView, memories_group
from projections.base import View, cached_key, iso

_memories_group = cached_key(memories_group)


def _memory_key(channel: str, memory_id: str) -> str:
    """`llm_es.domain.views.memory_key`, with the channel's part remembered."""
    return f"{_memories_group(channel)}.{memory_id}"


class MemoriesProjection:
    """`memories.<channel>.<id>` with `accessed_at` moved by recalls."""

    name = "memories"
    key_prefix = "memories."
    event_types: frozenset[type[Event]] = frozenset({MemoryAdded, MemoryForgotten, MemoryRecalled})

    def keys_for(self, event: Event) -> tuple[str, ...]:
        if isinstance(event, (MemoryAdded, MemoryForgotten)):
            return (_memory_key(event.channel, event.memory_id),)
        if isinstance(event, MemoryRecalled):
            return tuple(_memory_key(event.channel, m) for m in event.memory_ids)
        return ()

    def apply(self, key: str, view: View | None, event: Event, seq: int) -> View | None:
        if isinstance(event, MemoryAdded):
            added: MemoryView = {
                "id": event.memory_id,
                "channel": event.channel,
                "content": event.content,
                "category": event.category,
                "importance": event.importance,
                "user_id": event.user_id,
                "created_at": iso(event),
                "accessed_at": iso(event),
                "seq": seq,
            }
            return dict(added)
        if isinstance(event, MemoryForgotten):
            return None
        if isinstance(event, MemoryRecalled) and view is not None:
            return {**view, "accessed_at": iso(event), "seq": seq}
        return view

    # Every value is built afresh, so folding in place is the same as applying.
    fold = apply
