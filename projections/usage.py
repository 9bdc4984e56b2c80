"""Usage view: per-user request windows, day counters, token spend and open turns.

Every event that names a user moves the view's `seq`, so `seq` is the last
sequence on the user's subjects: the position the admission decider passes as
the expected last sequence of its conditional append.
"""

from __future__ import annotations

from llm_es.domain.events import (
    EVENT_TYPES,
    Event,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
)
from llm_es.domain.limits import day_of, new_day
from llm_es.domain.views import UsageView, usage_key
from projections.base import View, cached_key, iso

HOUR_SECONDS = 3600
_usage_key = cached_key(usage_key)
_TURN_ENDS = (TurnCompleted, TurnFailed)


class UsageProjection:
    """`usage.<user>`: what the rate and token limits are checked against.

    `recent_requests` keeps at most `keep_requests` admission times (the
    largest minute/hour limit): enough to decide both sliding windows exactly,
    and bounded however busy a user is.
    """

    name = "usage"
    key_prefix = "usage."
    event_types: frozenset[type[Event]] = frozenset(EVENT_TYPES.values())
    """Any event naming a user (`keys_for` tells)."""

    def __init__(self, keep_requests: int = 10_000) -> None:
        self.keep_requests = keep_requests

    def keys_for(self, event: Event) -> tuple[str, ...]:
        user = event.user_name
        return (_usage_key(user),) if user is not None else ()

    def apply(self, key: str, view: View | None, event: Event, seq: int) -> View | None:
        return self.fold(key, None if view is None else _own_copy(view), event, seq)

    def fold(self, key: str, view: View | None, event: Event, seq: int) -> View | None:
        if view is None:
            usage: UsageView = {
                "user": event.user_name or "",
                "seq": seq,
                "day": day_of(event.at),
                "requests_today": 0,
                "rejected_today": 0,
                "tokens_today": 0,
                "recent_requests": [],
                "open_turns": {},
                "total_requests": 0,
                "total_tokens": 0,
            }
        else:
            usage = view  # type: ignore[assignment]
            usage["seq"] = seq
            if day := new_day(usage["day"], event.at):
                usage["day"] = day
                usage["requests_today"] = usage["rejected_today"] = usage["tokens_today"] = 0
        if isinstance(event, TurnAdmitted):
            at_ts = event.at.timestamp()
            cutoff = at_ts - HOUR_SECONDS
            recent = usage["recent_requests"]
            if recent and min(recent) <= cutoff:
                recent = [t for t in recent if t > cutoff]
            recent.append(round(at_ts, 6))
            keep = self.keep_requests
            if not keep:
                recent = []
            elif len(recent) > keep:
                del recent[:-keep]
            usage["recent_requests"] = recent
            usage["requests_today"] += 1
            usage["total_requests"] += 1
            usage["open_turns"][event.turn_id] = {
                "channel": event.channel,
                "admitted_at": iso(event),
                "admitted_seq": seq,
                "reserved_tokens": event.reserved_tokens,
            }
        elif isinstance(event, TurnRejected):
            usage["rejected_today"] += 1
            refusals = usage.setdefault("last_refusals", {})
            refusals[event.window] = round(event.at.timestamp(), 6)
        elif isinstance(event, TokensSpent):
            spent = event.prompt_tokens + event.completion_tokens
            usage["tokens_today"] += spent
            usage["total_tokens"] += spent
            turn = usage["open_turns"].get(event.turn_id)
            if turn is not None:
                turn["reserved_tokens"] = 0  # settled: the real figure replaces the reservation
        elif isinstance(event, _TURN_ENDS):
            usage["open_turns"].pop(event.turn_id, None)
        return usage  # type: ignore[return-value]


def _own_copy(view: View) -> View:
    """A copy of a usage value that `fold` may change without touching `view`."""
    return {
        **view,
        "recent_requests": list(view["recent_requests"]),
        "open_turns": {turn: dict(open_turn) for turn, open_turn in view["open_turns"].items()},
        **({"last_refusals": dict(view["last_refusals"])} if "last_refusals" in view else {}),
    }
