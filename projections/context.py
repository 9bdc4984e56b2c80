"""Context view: a channel's recent messages, running summary, and turns in flight."""

from __future__ import annotations

from llm_es.domain.events import (
    ContextReset,
    ContextSummarized,
    Event,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
)
from llm_es.domain.views import ContextView, context_key
from projections.base import View, cached_key, iso

_context_key = cached_key(context_key)
_CONTEXT_EVENTS = (TurnAdmitted, TurnCompleted, TurnFailed, ContextReset, ContextSummarized)


class ContextProjection:
    """`messages.<channel>.recent`: the last `max_messages` messages plus the summary.

    `max_messages` is larger than the prompt's window when summaries are on,
    so older messages wait here until the summarizer folds them in.

    A user's message enters the context together with the answer (on
    TurnCompleted), so failed turns leave no dangling question behind.
    """

    name = "context"
    key_prefix = "messages."
    event_types: frozenset[type[Event]] = frozenset(_CONTEXT_EVENTS)

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages

    def keys_for(self, event: Event) -> tuple[str, ...]:
        if isinstance(event, TurnAdmitted) and event.purpose != "chat":
            return ()  # service completions are not part of any conversation
        if isinstance(event, _CONTEXT_EVENTS) and event.channel is not None:
            return (_context_key(event.channel),)
        return ()

    def apply(self, key: str, view: View | None, event: Event, seq: int) -> View | None:
        if view is not None:
            # Messages and pending turns are never changed in place, only the containers.
            view = {**view, "messages": list(view["messages"]), "pending": dict(view["pending"])}
        return self.fold(key, view, event, seq)

    def fold(self, key: str, view: View | None, event: Event, seq: int) -> View | None:
        context: ContextView = (
            view  # type: ignore[assignment]
            if view is not None
            else {
                "channel": event.channel_name or "",
                "seq": 0,
                "summary": None,
                "summary_seq": 0,
                "messages": [],
                "pending": {},
            }
        )
        context["seq"] = seq
        if isinstance(event, TurnAdmitted):
            context["pending"][event.turn_id] = {
                "user": event.user,
                "content": event.message,
                "timestamp": iso(event),
            }
        elif isinstance(event, TurnCompleted):
            asked = context["pending"].pop(event.turn_id, None)
            if asked is not None:
                messages = context["messages"]
                messages.append(
                    {
                        "role": "user",
                        "content": asked["content"],
                        "user_id": asked["user"],
                        "timestamp": asked["timestamp"],
                        "turn_id": event.turn_id,
                        "seq": seq,
                    }
                )
                messages.append(
                    {
                        "role": "assistant",
                        "content": event.content,
                        "user_id": None,
                        "timestamp": iso(event),
                        "turn_id": event.turn_id,
                        "seq": seq,
                    }
                )
                if self.max_messages and len(messages) > self.max_messages:
                    del messages[: -self.max_messages]
        elif isinstance(event, TurnFailed):
            context["pending"].pop(event.turn_id, None)
        elif isinstance(event, ContextReset):
            # Turns in flight belong to the conversation being cleared: their
            # answers still reach the user but do not seed the new context.
            context["messages"] = []
            context["summary"] = None
            context["pending"] = {}
        elif isinstance(event, ContextSummarized):
            context["summary"] = event.summary
            context["summary_seq"] = seq
            context["messages"] = [m for m in context["messages"] if m["seq"] > event.through_seq]
        return context  # type: ignore[return-value]
