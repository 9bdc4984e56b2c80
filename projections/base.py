"""What a projection is: a named pure fold from events to KV view values."""

from __future__ import annotations

from typing import Any, Protocol

from llm_es.events import Event

View = dict[str, Any]


class Projection(Protocol):
    """A pure fold `(view, event) -> view` over the keys an event touches."""

    name: str

    def keys_for(self, event: Event) -> tuple[str, ...]:
        """The view keys this event changes (empty when it does not concern this view)."""

    def apply(self, key: str, view: View | None, event: Event, seq: int) -> View | None:
        """The key's new value after `event` (stream sequence `seq`); None deletes the key.

        Must not mutate `view`; the result records `seq`.
        """


def iso(event: Event) -> str:
    """The event's time as ISO 8601 UTC with `Z`, the form every view stores."""
    return event.at.isoformat().replace("+00:00", "Z")
