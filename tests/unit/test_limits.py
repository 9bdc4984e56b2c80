"""Tests of llm_es.domain.limits: admission against sliding windows, UTC days, token reservations.

Usage views are built by folding events through `projections.usage.UsageProjection`,
so these tests also pin the fold the decider depends on.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import cast

import msgspec
import pytest

from llm_es.config import RateLimitsConfig
from llm_es.domain.events import Event, TokensSpent, TurnAdmitted, TurnCompleted, TurnRejected
from llm_es.domain.limits import (
    MIN_COMPLETION_TOKENS,
    TurnRequest,
    decide_admission,
    estimate_tokens,
    new_day,
    refusal_is_new,
    seconds_to_midnight,
    usage_numbers,
)
from llm_es.domain.views import UsageView, usage_key
from projections.base import View
from projections.usage import UsageProjection

USER = "alice"
NOW = datetime(2024, 5, 17, 20, 0, 0, tzinfo=UTC)
SECONDS_TO_MIDNIGHT = 4 * 3600
PROMPT = 50
MAX_TOKENS = 512

REQUEST = TurnRequest(
    turn_id="new-turn",
    channel="general",
    user=USER,
    source="command",
    persona="default",
    provider="ollama",
    model="llama3.2",
    message="hello",
)


def limits(
    *,
    minute: int | None = None,
    hour: int | None = None,
    day: int | None = None,
    tokens: int | None = None,
) -> RateLimitsConfig:
    """Limits with everything unlimited except what the test names."""
    return RateLimitsConfig(
        requests_per_minute=minute,
        requests_per_hour=hour,
        requests_per_day=day,
        tokens_per_day=tokens,
    )


def admitted(at: datetime, turn_id: str, reserved: int = 100) -> TurnAdmitted:
    return TurnAdmitted(
        at=at,
        turn_id=turn_id,
        channel="general",
        user=USER,
        source="command",
        persona="default",
        provider="ollama",
        model="llama3.2",
        message="hi",
        reserved_tokens=reserved,
        max_tokens=reserved,
    )


def spent(at: datetime, turn_id: str, prompt: int, completion: int) -> TokensSpent:
    return TokensSpent(
        at=at,
        turn_id=turn_id,
        channel="general",
        user=USER,
        purpose="chat",
        provider="ollama",
        model="llama3.2",
        prompt_tokens=prompt,
        completion_tokens=completion,
        estimated=False,
    )


def completed(at: datetime, turn_id: str) -> TurnCompleted:
    return TurnCompleted(
        at=at,
        turn_id=turn_id,
        channel="general",
        user=USER,
        content="ok",
        provider="ollama",
        model="llama3.2",
        latency_ms=1.0,
        finish_reason="stop",
    )


def finished_turn(at: datetime, turn_id: str, tokens: int = 0) -> list[Event]:
    """A whole turn: admitted, tokens settled, completed, all at `at`."""
    return [admitted(at, turn_id), spent(at, turn_id, tokens, 0), completed(at, turn_id)]


def usage_after(events: Iterable[Event]) -> UsageView:
    """The user's usage view after folding `events` in order (sequence 1, 2, ...)."""
    projection = UsageProjection()
    key = usage_key(USER)
    view: View | None = None
    for seq, event in enumerate(events, start=1):
        assert projection.keys_for(event) == (key,)
        view = projection.apply(key, view, event, seq)
    assert view is not None
    return cast(UsageView, view)


def decide(
    usage: UsageView | None,
    rate_limits: RateLimitsConfig,
    *,
    now: datetime = NOW,
    prompt: int = PROMPT,
    max_tokens: int = MAX_TOKENS,
) -> TurnAdmitted | TurnRejected:
    return decide_admission(
        REQUEST,
        usage,
        rate_limits,
        now=now,
        prompt_tokens_estimate=prompt,
        max_tokens=max_tokens,
    )


def admit(decision: TurnAdmitted | TurnRejected) -> TurnAdmitted:
    assert isinstance(decision, TurnAdmitted), decision
    return decision


def reject(decision: TurnAdmitted | TurnRejected) -> TurnRejected:
    assert isinstance(decision, TurnRejected), decision
    return decision


def test_first_turn_is_admitted_with_prompt_plus_max_tokens_reserved() -> None:
    """With no usage yet the turn is admitted; it reserves prompt estimate + max_tokens."""
    decision = admit(decide(None, limits(minute=10, hour=100, day=500, tokens=50000)))
    assert decision.max_tokens == MAX_TOKENS
    assert decision.reserved_tokens == PROMPT + MAX_TOKENS
    assert decision.at == NOW
    assert (decision.turn_id, decision.channel, decision.user) == ("new-turn", "general", USER)
    assert (decision.source, decision.persona, decision.message) == ("command", "default", "hello")
    assert (decision.provider, decision.model) == ("ollama", "llama3.2")


def test_minute_limit_rejects_with_seed_text_and_time_until_oldest_leaves() -> None:
    """10 turns in the last minute: the 11th is refused, resetting when the oldest is 60 s old."""
    events: list[Event] = []
    for n in range(10):
        events += finished_turn(NOW - timedelta(seconds=45 - n), f"t{n}")
    decision = reject(decide(usage_after(events), limits(minute=10)))
    assert decision.detail == "Rate limit: 10 requests/minute (resets in 15s)"
    assert (decision.reason, decision.window, decision.limit) == ("rate_limit", "minute", 10)
    assert (decision.turn_id, decision.channel, decision.user, decision.at) == (
        "new-turn",
        "general",
        USER,
        NOW,
    )


def test_minute_window_slides() -> None:
    """A turn exactly 60 s old has left the window, so 9 recent turns leave room for one more."""
    events = finished_turn(NOW - timedelta(seconds=60), "old")
    for n in range(9):
        events += finished_turn(NOW - timedelta(seconds=30), f"t{n}")
    usage = usage_after(events)
    admit(decide(usage, limits(minute=10)))
    # Half a second earlier the old turn was still inside the window.
    reject(decide(usage, limits(minute=10), now=NOW - timedelta(milliseconds=500)))


def test_hour_limit_slides_and_names_its_reset() -> None:
    """3 turns in the last hour hit a 3/hour limit; the window reopens when the oldest leaves."""
    events: list[Event] = []
    for n, ago in enumerate((3000, 2000, 100)):
        events += finished_turn(NOW - timedelta(seconds=ago), f"t{n}")
    usage = usage_after(events)
    decision = reject(decide(usage, limits(minute=10, hour=3)))
    assert decision.detail == "Rate limit: 3 requests/hour (resets in 600s)"
    assert (decision.window, decision.limit) == ("hour", 3)
    admit(decide(usage, limits(minute=10, hour=3), now=NOW + timedelta(seconds=600)))


def test_day_limit_counts_the_utc_day_and_resets_at_midnight() -> None:
    """2 turns today hit a 2/day limit until 00:00 UTC, whatever the sliding windows say."""
    events = finished_turn(NOW.replace(hour=1), "t1") + finished_turn(NOW.replace(hour=2), "t2")
    usage = usage_after(events)
    decision = reject(decide(usage, limits(day=2)))
    assert decision.detail == f"Rate limit: 2 requests/day (resets in {SECONDS_TO_MIDNIGHT}s)"
    assert (decision.window, decision.limit) == ("day", 2)
    midnight = datetime(2024, 5, 18, tzinfo=UTC)
    reject(decide(usage, limits(day=2), now=midnight - timedelta(microseconds=1)))
    admit(decide(usage, limits(day=2), now=midnight))


def test_turns_late_yesterday_do_not_count_today_but_still_slide() -> None:
    """Just after midnight yesterday's turns drop out of the day count, not the hour window."""
    midnight = datetime(2024, 5, 18, tzinfo=UTC)
    events = finished_turn(midnight - timedelta(minutes=30), "t1")
    events += finished_turn(midnight - timedelta(minutes=10), "t2")
    usage = usage_after(events)
    now = midnight + timedelta(seconds=30)
    admit(decide(usage, limits(day=2), now=now))
    decision = reject(decide(usage, limits(hour=2, day=2), now=now))
    assert decision.window == "hour"
    assert usage_numbers(usage, now).requests_today == 0
    assert usage_numbers(usage, now).requests_hour == 2


def test_rejected_turns_do_not_count_as_requests() -> None:
    """A refused turn uses none of the window: only admitted turns count."""
    rejected = TurnRejected(
        at=NOW - timedelta(seconds=5),
        turn_id="r1",
        channel="general",
        user=USER,
        reason="rate_limit",
        window="minute",
        limit=1,
        detail="...",
    )
    usage = usage_after([rejected])
    assert usage["rejected_today"] == 1
    admit(decide(usage, limits(minute=1, hour=1, day=1)))


def test_token_limit_counts_spent_and_reserved_tokens_and_caps_max_tokens() -> None:
    """Headroom = limit - spent today - open reservations - prompt; max_tokens is cut to it."""
    events = finished_turn(NOW - timedelta(hours=2), "done", tokens=600)
    events.append(admitted(NOW - timedelta(seconds=5), "open", reserved=300))
    usage = usage_after(events)
    numbers = usage_numbers(usage, NOW)
    assert (numbers.tokens_today, numbers.reserved_tokens) == (600, 300)

    decision = admit(decide(usage, limits(tokens=1000)))
    assert decision.max_tokens == 1000 - 600 - 300 - PROMPT
    assert decision.reserved_tokens == PROMPT + decision.max_tokens
    assert decision.reserved_tokens + 600 + 300 == 1000  # the limit can be reached, never passed


def test_max_tokens_is_left_alone_when_the_headroom_is_larger() -> None:
    """A turn that fits whole keeps the max_tokens it asked for."""
    usage = usage_after(finished_turn(NOW - timedelta(hours=1), "t", tokens=100))
    decision = admit(decide(usage, limits(tokens=50000)))
    assert decision.max_tokens == MAX_TOKENS


def test_settled_turn_frees_its_reservation() -> None:
    """TokensSpent replaces the reservation with the real figure, even before the turn ends."""
    events: list[Event] = [admitted(NOW - timedelta(seconds=5), "t", reserved=900)]
    assert usage_numbers(usage_after(events), NOW).reserved_tokens == 900
    events.append(spent(NOW - timedelta(seconds=1), "t", 30, 20))
    numbers = usage_numbers(usage_after(events), NOW)
    assert (numbers.tokens_today, numbers.reserved_tokens) == (50, 0)


@pytest.mark.parametrize(
    ("headroom", "admitted_turn"),
    [(MIN_COMPLETION_TOKENS, True), (MIN_COMPLETION_TOKENS - 1, False), (0, False), (-5, False)],
)
def test_turn_is_refused_below_min_completion_tokens_of_headroom(
    headroom: int, admitted_turn: bool
) -> None:
    """Headroom of MIN_COMPLETION_TOKENS admits (capped); less is refused with the seed text."""
    spent_today = 1000 - PROMPT - headroom
    usage = usage_after(finished_turn(NOW - timedelta(hours=3), "t", tokens=spent_today))
    decision = decide(usage, limits(tokens=1000))
    if admitted_turn:
        assert admit(decision).max_tokens == headroom
    else:
        refused = reject(decision)
        assert refused.detail == (
            f"Token limit: 1000 tokens/day (resets in {SECONDS_TO_MIDNIGHT}s)"
        )
        assert (refused.reason, refused.window, refused.limit) == ("rate_limit", "tokens_day", 1000)


def test_open_reservations_alone_can_exhaust_the_token_limit() -> None:
    """Turns still in flight hold their reservation: nothing spent yet, but no headroom left."""
    usage = usage_after([admitted(NOW - timedelta(seconds=1), "open", reserved=990)])
    reject(decide(usage, limits(tokens=1000)))


def test_tokens_spent_yesterday_do_not_count_today() -> None:
    """The token budget resets at 00:00 UTC."""
    yesterday = NOW - timedelta(days=1)
    usage = usage_after(finished_turn(yesterday, "t", tokens=1000))
    reject(decide(usage, limits(tokens=1000), now=yesterday + timedelta(minutes=1)))
    admit(decide(usage, limits(tokens=1000)))


def test_none_limits_mean_unlimited() -> None:
    """With every limit None, heavy usage is admitted and max_tokens is not capped."""
    events: list[Event] = []
    for n in range(200):
        events += finished_turn(NOW - timedelta(seconds=n % 50), f"t{n}", tokens=10_000)
    usage = usage_after(events)
    decision = admit(decide(usage, limits(), max_tokens=100_000))
    assert decision.max_tokens == 100_000
    assert decision.reserved_tokens == PROMPT + 100_000


def test_limits_are_checked_minute_then_hour_then_day_then_tokens() -> None:
    """When several limits are hit the narrowest window is named."""
    events: list[Event] = []
    for n in range(3):
        events += finished_turn(NOW - timedelta(seconds=10 + n), f"t{n}", tokens=400)
    usage = usage_after(events)
    every = {"minute": 3, "hour": 3, "day": 3, "tokens": 1000}
    assert reject(decide(usage, limits(**every))).window == "minute"
    assert reject(decide(usage, limits(**every | {"minute": None}))).window == "hour"
    no_windows = every | {"minute": None, "hour": None}
    assert reject(decide(usage, limits(**no_windows))).window == "day"
    assert reject(decide(usage, limits(**no_windows | {"day": None}))).window == "tokens_day"


def test_view_already_on_a_later_day_still_counts() -> None:
    """A clock that lags another writer's past midnight still sees the new day's counts."""
    midnight = datetime(2024, 5, 18, tzinfo=UTC)
    usage = usage_after(finished_turn(midnight + timedelta(seconds=2), "t", tokens=960))
    lagging_now = midnight - timedelta(seconds=1)
    assert usage_numbers(usage, lagging_now).tokens_today == 960
    reject(decide(usage, limits(tokens=1000), now=lagging_now))


def test_seconds_to_midnight_and_token_estimate() -> None:
    """Reset times count to the next 00:00 UTC (at least 1 s); estimates round up."""
    assert seconds_to_midnight(NOW) == SECONDS_TO_MIDNIGHT
    assert seconds_to_midnight(datetime(2024, 5, 18, tzinfo=UTC)) == 86400
    assert seconds_to_midnight(datetime(2024, 5, 17, 23, 59, 59, 999999, tzinfo=UTC)) == 1
    assert estimate_tokens(0) == 0
    assert estimate_tokens(1) == 1
    assert estimate_tokens(7) == 3


def test_the_day_only_moves_forward() -> None:
    """`new_day` names the UTC day a later moment starts, and None for the same or an
    earlier day (a slower clock's event counts into the day already begun)."""
    assert new_day("2024-05-17", NOW) is None
    assert new_day("2024-05-17", NOW + timedelta(hours=4)) == "2024-05-18"
    assert new_day("2024-05-18", NOW) is None
    east = timezone(timedelta(hours=5))
    assert new_day("2024-05-17", datetime(2024, 5, 18, 3, tzinfo=east)) is None
    assert new_day("2024-05-17", datetime(2024, 5, 18, 6, tzinfo=east)) == "2024-05-18"


@pytest.mark.parametrize(
    ("window", "rate_limits", "still_same", "next_window"),
    [
        ("minute", limits(minute=1), timedelta(seconds=58), timedelta(seconds=60)),
        ("hour", limits(hour=1), timedelta(minutes=59), timedelta(hours=1)),
        # NOW is 20:00 UTC: the day window lasts until midnight, not 24 hours.
        ("day", limits(day=1), timedelta(hours=3, minutes=59), timedelta(hours=4)),
    ],
)
def test_a_refusal_is_new_once_per_user_and_window(
    window: str, rate_limits: RateLimitsConfig, still_same: timedelta, next_window: timedelta
) -> None:
    """The first refusal by a window is new; the ones after it within the window are not,
    by the time the usage view folded from the log keeps; the next window's first is new."""
    usage = usage_after(finished_turn(NOW - timedelta(seconds=1), "t0"))
    first = reject(decide(usage, rate_limits))
    assert first.window == window
    assert refusal_is_new(usage, first)
    usage = usage_after([*finished_turn(NOW - timedelta(seconds=1), "t0"), first])
    assert usage["last_refusals"] == {window: NOW.timestamp()}
    repeat = reject(decide(usage, rate_limits, now=NOW + still_same))
    assert not refusal_is_new(usage, repeat)
    other_window = reject(decide(usage, limits(tokens=1), now=NOW + still_same))
    assert refusal_is_new(usage, other_window)
    assert refusal_is_new(usage, msgspec.structs.replace(first, at=NOW + next_window))
