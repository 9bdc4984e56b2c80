"""Pure: log events in stream order -> the seed's observability events `rosey.event.llm.*`.

Each `Observation` has a body with exactly the fields of the seed's event
dataclass (`LLMResponseEvent`, `LLMErrorEvent`, `LLMMemoryEvent`,
`LLMSummarizedEvent`, `UsageThresholdEvent`; DESIGN.md "Seed schemas"), since
subscribers read them with `Class(**body)` and a dataclass refuses any other
keyword. What the log knows beyond that travels in NATS headers:

    Nats-Msg-Id       the log event's id (+ `:<threshold type>` for thresholds), so a
                      JetStream capture of these subjects drops repeats
    Llm-Seq           the log sequence the event derives from
    Llm-Timestamp     the log event's time, UTC ISO 8601 with `Z`
    Llm-Turn-Id       the turn, for events that belong to one
    Llm-Model         the model that answered (response events)
    Llm-Window-Start  the window a usage threshold fired in (threshold events)

Subscribers who want the whole record read the log (`llm.ev.>`) itself.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from llm_es import headers
from llm_es.config import RateLimitsConfig
from llm_es.domain.events import (
    ContextSummarized,
    Event,
    MemoryAdded,
    MemoryForgotten,
    MemoryRecalled,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
    iso_utc,
)
from llm_es.domain.limits import day_of, new_day
from llm_es.domain.personal_data import text_length

EVENT_SUBJECT_PREFIX = "rosey.event.llm"
RESPONSE_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.response"
ERROR_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.error"
MEMORY_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.memory"
SUMMARIZED_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.summarized"
USAGE_THRESHOLD_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.usage_threshold"

MEMORY_ACTIONS = {MemoryAdded: "add", MemoryRecalled: "recall", MemoryForgotten: "forget"}
"""`action` of a memory event: the seed's `LLMMemoryEvent` words (add, recall), plus forget."""

SEED_ERROR_TYPES = {"rate_limited": "rate_limit"}
"""Recorded failure types published under the seed's word for the same thing.

The finer kinds (`timeout`, `unavailable`, `abandoned`, `auth`, `bad_request`)
are published as recorded."""

NO_CHANNEL = ""
"""`channel` of an event whose turn belongs to no channel (a completion or summary
for another plugin): the seed declares the field a string."""

THRESHOLD_NUMERATOR, THRESHOLD_DENOMINATOR = 4, 5
"""A usage threshold event fires at 80% of a limit (integer arithmetic: no rounding surprises)."""

CLOCK_SKEW_MARGIN = timedelta(minutes=5)
"""Writers' clocks may disagree this much; folds start this much earlier to stay exact."""
MAX_TRACKED_TURNS = 10_000
MAX_TRACKED_USERS = 100_000
_USER_IDLE_SECONDS = 86_400 + CLOCK_SKEW_MARGIN.total_seconds()
"""A user silent this long has no usage left in any window: forgetting them changes nothing."""


def fold_window_start(moment: datetime) -> datetime:
    """Earliest event time that can affect usage thresholds at `moment` or later.

    Thresholds look at the sliding hour (and the clock hour it started in) and
    the UTC day, so a fold from here is exact; the margin covers clock skew.
    """
    utc = moment.astimezone(UTC)
    day_start = datetime(utc.year, utc.month, utc.day, tzinfo=UTC)
    hour_start = utc.replace(minute=0, second=0, microsecond=0)
    return min(day_start, hour_start - timedelta(hours=1)) - CLOCK_SKEW_MARGIN


@dataclass(frozen=True, slots=True)
class Observation:
    """One event to publish: subject, the seed-shaped body, headers, and its log sequence."""

    seq: int
    subject: str
    body: dict[str, Any]
    headers: dict[str, str]

    def payload(self) -> bytes:
        return orjson.dumps(self.body)


def _headers(
    seq: int, event: Event, turn_id: str | None = None, suffix: str = ""
) -> dict[str, str]:
    """The headers every published event carries (see the module docstring)."""
    found = {
        headers.MSG_ID: f"{event.id}{suffix}",
        headers.LLM_SEQ: str(seq),
        headers.LLM_TIMESTAMP: iso_utc(event.at),
    }
    if turn_id:
        found[headers.LLM_TURN_ID] = turn_id
    return found


@dataclass(slots=True)
class _TurnInfo:
    """What the log said about a turn before it ended (bounded map, see MAX_TRACKED_TURNS)."""

    provider: str = ""
    persona: str | None = None
    message_length: int = 0
    tokens_used: int = 0


@dataclass(slots=True)
class _UserUsage:
    """A user's usage as the thresholds need it: sliding request times, day counters, marks."""

    day: str
    last_seen: float
    recent: deque[float]
    requests_today: int = 0
    tokens_today: int = 0
    fired: dict[str, int | str] = field(default_factory=dict)
    """threshold type -> the window it last fired in (clock minute/hour number, or UTC day)."""


class ObservationFold:
    """Pure: log events in stream order -> the observability events they produce.

    `usage_threshold` fires when a count reaches 80% of a configured limit, at
    most once per window: the clock minute or clock hour the crossing falls in
    (counts themselves slide over the last 60 s / 3600 s, as admission does),
    or the UTC day for `day` requests and `tokens` (tokens spent, as settled by
    `TokensSpent`). Every decision depends only on the events of the hour and
    day before it, so folding from `fold_window_start` gives the same events as
    folding the whole log.
    """

    def __init__(self, limits: RateLimitsConfig) -> None:
        self._limits = limits
        windows = (limits.requests_per_minute, limits.requests_per_hour)
        self._keep = max((w for w in windows if w is not None), default=0)
        self._turns: OrderedDict[str, _TurnInfo] = OrderedDict()
        self._users: OrderedDict[str, _UserUsage] = OrderedDict()

    def apply(self, seq: int, event: Event) -> list[Observation]:
        """The events `event` (stream sequence `seq`) produces; updates the fold."""
        if isinstance(event, TurnAdmitted):
            return self._admitted(seq, event)
        if isinstance(event, TokensSpent):
            return self._spent(seq, event)
        if isinstance(event, TurnCompleted):
            return [self._response(seq, event)]
        if isinstance(event, TurnFailed):
            info = self._turns.pop(event.turn_id, None) or _TurnInfo()
            error_type = SEED_ERROR_TYPES.get(event.error_type, event.error_type)
            return [_error(seq, event, event.error, info.provider, error_type)]
        if isinstance(event, TurnRejected):
            return [_error(seq, event, event.detail, event.provider, event.reason)]
        if isinstance(event, MemoryAdded | MemoryRecalled | MemoryForgotten):
            return [_memory(seq, event)]
        if isinstance(event, ContextSummarized):
            return [_summarized(seq, event)]
        return []

    # ------------------------------------------------------------ turns

    def _turn(self, turn_id: str) -> _TurnInfo:
        info = self._turns.get(turn_id)
        if info is None:
            info = self._turns[turn_id] = _TurnInfo()
            while len(self._turns) > MAX_TRACKED_TURNS:
                self._turns.popitem(last=False)
        return info

    def _admitted(self, seq: int, event: TurnAdmitted) -> list[Observation]:
        info = self._turn(event.turn_id)
        info.provider = event.provider
        info.persona = event.persona or None
        info.message_length = text_length(event.message)
        if event.user is None:
            return []
        usage = self._usage_of(event.user, event.at)
        moment = event.at.timestamp()
        if self._keep:
            usage.recent.append(moment)
        usage.requests_today += 1
        limits = self._limits
        crossings: list[Observation] = []
        for kind, limit, seconds in (
            ("minute", limits.requests_per_minute, 60),
            ("hour", limits.requests_per_hour, 3600),
        ):
            if limit is not None:
                count = sum(1 for t in usage.recent if t > moment - seconds)
                window = int(moment // seconds) * seconds
                crossings += _crossing(seq, event, usage, kind, limit, count, window)
        crossings += _crossing(
            seq, event, usage, "day", limits.requests_per_day, usage.requests_today, usage.day
        )
        return crossings

    def _spent(self, seq: int, event: TokensSpent) -> list[Observation]:
        tokens = event.prompt_tokens + event.completion_tokens
        if event.purpose != "context_summary":
            info = self._turn(event.turn_id)
            info.tokens_used += tokens
        if event.user is None:
            return []
        usage = self._usage_of(event.user, event.at)
        usage.tokens_today += tokens
        limit = self._limits.tokens_per_day
        return _crossing(seq, event, usage, "tokens", limit, usage.tokens_today, usage.day)

    def _response(self, seq: int, event: TurnCompleted) -> Observation:
        """`LLMResponseEvent`: tokens from the turn's `TokensSpent`, lengths in characters."""
        info = self._turns.pop(event.turn_id, None) or _TurnInfo()
        found = _headers(seq, event, event.turn_id)
        found[headers.LLM_MODEL] = event.model
        body = {
            "channel": event.channel or NO_CHANNEL,
            "user": event.user or "",
            "prompt_length": info.message_length,
            "response_length": text_length(event.content),
            "tokens_used": info.tokens_used,
            "provider": event.provider,
            "latency_ms": round(event.latency_ms),
            "persona": info.persona,
        }
        return Observation(seq, RESPONSE_SUBJECT, body, found)

    # ------------------------------------------------------------ usage thresholds

    def _usage_of(self, user: str, at: datetime) -> _UserUsage:
        moment = at.timestamp()
        usage = self._users.get(user)
        if usage is None:
            usage = self._users[user] = _UserUsage(
                day=day_of(at), last_seen=moment, recent=deque(maxlen=self._keep or 1)
            )
        else:
            self._users.move_to_end(user)
            usage.last_seen = max(usage.last_seen, moment)
            if day := new_day(usage.day, at):
                usage.day = day
                usage.requests_today = usage.tokens_today = 0
        self._forget_idle_users(moment)
        return usage

    def _forget_idle_users(self, now: float) -> None:
        users = self._users
        while users:
            oldest = next(iter(users.values()))
            if oldest.last_seen >= now - _USER_IDLE_SECONDS and len(users) <= MAX_TRACKED_USERS:
                return
            users.popitem(last=False)


def _error(
    seq: int, event: TurnFailed | TurnRejected, error: str, provider: str, error_type: str
) -> Observation:
    """`LLMErrorEvent`."""
    body = {
        "channel": event.channel or NO_CHANNEL,
        "user": event.user or "",
        "error": error,
        "provider": provider,
        "error_type": error_type,
    }
    return Observation(seq, ERROR_SUBJECT, body, _headers(seq, event, event.turn_id))


def _memory(seq: int, event: MemoryAdded | MemoryRecalled | MemoryForgotten) -> Observation:
    """`LLMMemoryEvent`: `memory_count` memories added, found or forgotten."""
    body = {
        "channel": event.channel,
        "action": MEMORY_ACTIONS[type(event)],
        "user_id": event.user_name,
        "memory_count": len(event.memory_ids) if isinstance(event, MemoryRecalled) else 1,
    }
    return Observation(seq, MEMORY_SUBJECT, body, _headers(seq, event))


def _summarized(seq: int, event: ContextSummarized) -> Observation:
    """`LLMSummarizedEvent`."""
    body = {
        "channel": event.channel,
        "message_count": event.message_count,
        "summary_length": text_length(event.summary),
    }
    return Observation(seq, SUMMARIZED_SUBJECT, body, _headers(seq, event))


def _crossing(
    seq: int,
    event: TurnAdmitted | TokensSpent,
    usage: _UserUsage,
    kind: str,
    limit: int | None,
    current: int,
    window: int | str,
) -> list[Observation]:
    """`UsageThresholdEvent` when `current` reaches 80% of `limit`, once per `window`: the
    clock minute or hour (its start in epoch seconds) or the UTC day."""
    if limit is None or current * THRESHOLD_DENOMINATOR < limit * THRESHOLD_NUMERATOR:
        return []
    if usage.fired.get(kind) == window:
        return []
    usage.fired[kind] = window
    if isinstance(window, int):
        window_start = datetime.fromtimestamp(window, UTC)
    else:
        window_start = datetime.fromisoformat(window).replace(tzinfo=UTC)
    found = _headers(seq, event, event.turn_id, suffix=f":{kind}")
    found[headers.LLM_WINDOW_START] = iso_utc(window_start)
    body = {
        "user": event.user or "",
        "channel": event.channel or NO_CHANNEL,
        "threshold_type": kind,
        "current": current,
        "limit": limit,
        # The seed's 0..1 share; a settle past the limit still reads as 1.0.
        "percentage": min(1.0, round(current / limit, 4)),
    }
    return [Observation(seq, USAGE_THRESHOLD_SUBJECT, body, found)]
