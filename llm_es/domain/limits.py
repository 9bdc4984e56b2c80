"""Admission decider: does a user's next turn fit the rate and token limits?

Pure: it reads the user's usage view and the clock value it is given, and
returns the event to append. Minute and hour windows slide; the day resets at
00:00 UTC and only moves forward (`new_day`, the rule the usage view and the
observation fold use too). Tokens are reserved at admission (prompt estimate +
completion cap) and settled by `TokensSpent`, so outstanding turns count against
the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from llm_es.config import RateLimitsConfig
from llm_es.domain.events import TurnAdmitted, TurnRejected
from llm_es.domain.views import UsageView

MIN_COMPLETION_TOKENS = 16
"""Below this many tokens of headroom a turn is refused rather than truncated to nothing."""

CHARS_PER_TOKEN_ESTIMATE = 3
"""Conservative: English averages about 4 characters a token."""


class TurnRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a caller asks for; the decider turns it into Admitted or Rejected.

    Its fields are those of `TurnAdmitted` but the reservation, which the decider adds.
    """

    turn_id: str
    channel: str | None
    user: str
    source: str
    persona: str
    provider: str
    model: str
    message: str
    purpose: str = "chat"
    instance: str = ""


@dataclass(frozen=True, slots=True)
class UsageNumbers:
    """A user's usage as of a moment: what counts against each limit."""

    requests_minute: int
    requests_hour: int
    requests_today: int
    tokens_today: int
    reserved_tokens: int
    oldest_in_minute: float | None
    oldest_in_hour: float | None


def estimate_tokens(text_length: int) -> int:
    """Token estimate for prompts the provider has not counted yet."""
    return math.ceil(text_length / CHARS_PER_TOKEN_ESTIMATE)


def day_of(moment: datetime) -> str:
    """The UTC day a moment belongs to (day limits reset at 00:00 UTC)."""
    if moment.tzinfo is UTC:  # every event time: a fold's hot path skips the conversion
        return moment.date().isoformat()
    return moment.astimezone(UTC).date().isoformat()


def new_day(day: str, moment: datetime) -> str | None:
    """The UTC day of `moment` if it is later than `day`, else None: the day rule.

    Usage counts in the UTC day of its event, and a user's day only moves forward:
    an event stamped just before midnight by a slower clock, folded after one from
    the new day, counts into the new day rather than resetting it; a clock that
    lags behind a view already on a later day still sees that day's counts.
    """
    moment_day = day_of(moment)
    return moment_day if moment_day > day else None


def seconds_to_midnight(now: datetime) -> int:
    """Seconds until the next 00:00 UTC."""
    utc = now.astimezone(UTC)
    midnight = datetime(utc.year, utc.month, utc.day, tzinfo=UTC) + timedelta(days=1)
    return max(1, math.ceil((midnight - utc).total_seconds()))


def usage_numbers(usage: UsageView | None, now: datetime) -> UsageNumbers:
    """Fold the usage view into the counts that apply at `now`."""
    if usage is None:
        return UsageNumbers(0, 0, 0, 0, 0, None, None)
    now_ts = now.timestamp()
    in_hour = [t for t in usage["recent_requests"] if t > now_ts - 3600]
    in_minute = [t for t in in_hour if t > now_ts - 60]
    current_day = new_day(usage["day"], now) is None
    return UsageNumbers(
        requests_minute=len(in_minute),
        requests_hour=len(in_hour),
        requests_today=usage["requests_today"] if current_day else 0,
        tokens_today=usage["tokens_today"] if current_day else 0,
        reserved_tokens=sum(t["reserved_tokens"] for t in usage["open_turns"].values()),
        oldest_in_minute=min(in_minute, default=None),
        oldest_in_hour=min(in_hour, default=None),
    )


def decide_admission(
    request: TurnRequest,
    usage: UsageView | None,
    limits: RateLimitsConfig,
    *,
    now: datetime,
    prompt_tokens_estimate: int,
    max_tokens: int,
) -> TurnAdmitted | TurnRejected:
    """Admit the turn with a token reservation, or reject it naming the limit hit."""
    numbers = usage_numbers(usage, now)
    now_ts = now.timestamp()

    def reject(window: str, limit: int, detail: str) -> TurnRejected:
        return TurnRejected(
            at=now,
            turn_id=request.turn_id,
            channel=request.channel,
            user=request.user,
            reason="rate_limit",
            window=window,
            limit=limit,
            detail=detail,
            provider=request.provider,
        )

    per_minute = limits.requests_per_minute
    if per_minute is not None and numbers.requests_minute >= per_minute:
        resets = _resets_in(numbers.oldest_in_minute, 60, now_ts)
        return reject(
            "minute", per_minute, f"Rate limit: {per_minute} requests/minute (resets in {resets}s)"
        )
    per_hour = limits.requests_per_hour
    if per_hour is not None and numbers.requests_hour >= per_hour:
        resets = _resets_in(numbers.oldest_in_hour, 3600, now_ts)
        return reject(
            "hour", per_hour, f"Rate limit: {per_hour} requests/hour (resets in {resets}s)"
        )
    per_day = limits.requests_per_day
    if per_day is not None and numbers.requests_today >= per_day:
        resets = seconds_to_midnight(now)
        return reject("day", per_day, f"Rate limit: {per_day} requests/day (resets in {resets}s)")
    tokens_per_day = limits.tokens_per_day
    if tokens_per_day is not None:
        headroom = (
            tokens_per_day - numbers.tokens_today - numbers.reserved_tokens - prompt_tokens_estimate
        )
        if headroom < MIN_COMPLETION_TOKENS:
            resets = seconds_to_midnight(now)
            return reject(
                "tokens_day",
                tokens_per_day,
                f"Token limit: {tokens_per_day} tokens/day (resets in {resets}s)",
            )
        # Cap the answer so the turn cannot overshoot the day's tokens.
        max_tokens = min(max_tokens, headroom)
    return TurnAdmitted(
        at=now,
        reserved_tokens=prompt_tokens_estimate + max_tokens,
        max_tokens=max_tokens,
        **msgspec.structs.asdict(request),
    )


REFUSAL_WINDOW_SECONDS = {"minute": 60, "hour": 3600}
"""How long a refusal by a sliding window stands for the ones after it; the day windows
(`day`, `tokens_day`) last until 00:00 UTC."""


def refusal_is_new(usage: UsageView | None, rejection: TurnRejected) -> bool:
    """Whether `rejection` is the user's first by its window in that window: only those are
    recorded, so a flood of refused requests appends one event per user and window.

    The window of a recorded refusal starts at its `at`: `minute` and `hour` last that
    long, the day windows until the end of its UTC day.
    """
    last = usage.get("last_refusals", {}).get(rejection.window) if usage else None
    if last is None:
        return True
    span = REFUSAL_WINDOW_SECONDS.get(rejection.window)
    if span is None:
        return day_of(datetime.fromtimestamp(last, UTC)) != day_of(rejection.at)
    return rejection.at.timestamp() - last >= span


def _resets_in(oldest: float | None, window: int, now_ts: float) -> int:
    if oldest is None:
        return window
    return max(1, math.ceil(oldest + window - now_ts))
