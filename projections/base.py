"""What a projection is: a named pure fold from events to KV view values."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

from llm_es.domain.events import Event

View = dict[str, Any]


class Projection(Protocol):
    """A pure fold `(view, event) -> view` over the keys an event touches."""

    name: str
    key_prefix: str
    """Every key of this view starts with it (`usage.`): tools tell the views apart by it."""
    event_types: frozenset[type[Event]]
    """The event classes `keys_for` may return keys for: a replay skips the others unasked."""

    def keys_for(self, event: Event) -> tuple[str, ...]:
        """The view keys this event changes (empty when it does not concern this view)."""

    def apply(self, key: str, view: View | None, event: Event, seq: int) -> View | None:
        """The key's new value after `event` (stream sequence `seq`); None deletes the key.

        Must not mutate `view`; the result records `seq`.
        """

    def fold(self, key: str, view: View | None, event: Event, seq: int) -> View | None:
        """What `apply` returns, but free to change `view` in place (often returning it).

        For a caller that owns every value and shares none with readers (a
        replay folding the log in memory): most of a rebuild's time was copies.
        """


KEY_CACHE_SIZE = 65_536
"""Names whose encoded view keys are remembered (encoding is a hot spot of every fold)."""


def cached_key(key_of: Callable[[str], str]) -> Callable[[str], str]:
    """`key_of` (a pure name -> key function), remembering recent names."""
    return functools.lru_cache(maxsize=KEY_CACHE_SIZE)(key_of)


def iso(event: Event) -> str:
    """The event's time as ISO 8601 UTC with `Z`, the form every view stores."""
    return event.at.isoformat().replace("+00:00", "Z")
