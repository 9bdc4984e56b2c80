"""Tests of the pure folds in projections/: context, memories, settings and usage views.

`fold` below mimics the runner: events get stream sequences 1, 2, ..., and a key
whose value already records a sequence >= the event's is left alone.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
import pytest

from llm_es.domain.events import (
    ContextReset,
    ContextSummarized,
    Event,
    MemoryAdded,
    MemoryForgotten,
    MemoryRecalled,
    PersonaSwitched,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
)
from llm_es.domain.limits import usage_numbers
from llm_es.domain.views import UsageView, context_key, memory_key, settings_key, usage_key
from projections.base import Projection, View
from projections.buckets import FLUSH_LINGER_MAX_SECONDS, FLUSH_LINGER_SECONDS, flush_linger
from projections.context import ContextProjection
from projections.memories import MemoriesProjection
from projections.settings import SettingsProjection
from projections.usage import UsageProjection

T0 = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)
CHANNEL = "general"
CONTEXT = context_key(CHANNEL)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso_at(seconds: float) -> str:
    return at(seconds).isoformat().replace("+00:00", "Z")


def fold(
    projection: Projection,
    events: Iterable[Event],
    state: dict[str, View] | None = None,
    *,
    first_seq: int = 1,
) -> dict[str, View]:
    """Apply events in order as the runner does (seq check per key); returns a new state."""
    values = dict(state or {})
    for seq, event in enumerate(events, start=first_seq):
        for key in projection.keys_for(event):
            current = values.get(key)
            if current is not None and current.get("seq", 0) >= seq:
                continue
            updated = projection.apply(key, current, event, seq)
            if updated is None:
                values.pop(key, None)
            else:
                values[key] = updated
    return values


# ------------------------------------------------------------------ event builders


def admitted(
    turn_id: str, message: str, *, user: str = "alice", t: float = 0, reserved: int = 100
) -> TurnAdmitted:
    return TurnAdmitted(
        at=at(t),
        turn_id=turn_id,
        channel=CHANNEL,
        user=user,
        source="command",
        persona="default",
        provider="ollama",
        model="llama3.2",
        message=message,
        reserved_tokens=reserved,
        max_tokens=reserved,
    )


def completed(turn_id: str, content: str, *, user: str = "alice", t: float = 1) -> TurnCompleted:
    return TurnCompleted(
        at=at(t),
        turn_id=turn_id,
        channel=CHANNEL,
        user=user,
        content=content,
        provider="ollama",
        model="llama3.2",
        latency_ms=5.0,
        finish_reason="stop",
    )


def failed(turn_id: str, *, user: str = "alice", t: float = 1) -> TurnFailed:
    return TurnFailed(
        at=at(t),
        turn_id=turn_id,
        channel=CHANNEL,
        user=user,
        error_type="timeout",
        error="too slow",
    )


def rejected(turn_id: str, *, user: str = "alice", t: float = 0) -> TurnRejected:
    return TurnRejected(
        at=at(t),
        turn_id=turn_id,
        channel=CHANNEL,
        user=user,
        reason="rate_limit",
        window="minute",
        limit=10,
        detail="Rate limit: 10 requests/minute (resets in 5s)",
    )


def spent(
    turn_id: str, prompt: int, completion: int, *, user: str | None = "alice", t: float = 1
) -> TokensSpent:
    return TokensSpent(
        at=at(t),
        turn_id=turn_id,
        channel=CHANNEL,
        user=user,
        purpose="chat",
        provider="ollama",
        model="llama3.2",
        prompt_tokens=prompt,
        completion_tokens=completion,
        estimated=False,
    )


def added(memory_id: str, content: str, *, t: float = 0, user: str | None = "alice") -> MemoryAdded:
    return MemoryAdded(
        at=at(t),
        memory_id=memory_id,
        channel=CHANNEL,
        user_id=user,
        content=content,
        category="fact",
        importance=4,
    )


def turn(turn_id: str, question: str, answer: str, *, user: str = "alice") -> list[Event]:
    return [admitted(turn_id, question, user=user), completed(turn_id, answer, user=user)]


def contents(view: View) -> list[str]:
    return [m["content"] for m in view["messages"]]


def mixed_history() -> list[Event]:
    """A history touching every projection, used for the general properties."""
    return [
        admitted("t1", "what is NATS?", t=0),
        spent("t1", 10, 20, t=1),
        completed("t1", "a messaging system", t=1),
        added("deadbeef", "Alice likes Python", t=2),
        admitted("t2", "and JetStream?", user="bob", t=3),
        failed("t2", user="bob", t=4),
        rejected("t3", user="bob", t=5),
        MemoryRecalled(
            at=at(6), channel=CHANNEL, user="bob", query="python", memory_ids=("deadbeef",)
        ),
        PersonaSwitched(at=at(7), channel=CHANNEL, user="carol", persona="concise"),
        admitted("t4", "tell me more", t=8),
        spent("t4", 30, 40, t=9),
        completed("t4", "it persists streams", t=9),
        ContextSummarized(
            at=at(10), channel=CHANNEL, summary="NATS talk", through_seq=3, message_count=2
        ),
        added("0badf00d", "Deadline is Friday", t=11, user=None),
        MemoryForgotten(at=at(12), channel=CHANNEL, user="alice", memory_id="deadbeef"),
        ContextReset(at=at(13), channel=CHANNEL, user="alice"),
        admitted("t5", "fresh start", t=14),
        admitted("t6", "next day", t=86400),
        spent("t6", 5, 5, t=86401),
        completed("t6", "new day answer", t=86401),
    ]


ALL_PROJECTIONS: list[Projection] = [
    ContextProjection(max_messages=4),
    MemoriesProjection(),
    SettingsProjection(),
    UsageProjection(),
]


# ------------------------------------------------------------------ context


def test_context_records_question_and_answer_when_the_turn_completes() -> None:
    """A completed turn adds the user's message (with speaker) and the answer; nothing pends."""
    admitted_only = fold(ContextProjection(10), [admitted("t1", "hello?")])
    view = admitted_only[CONTEXT]
    assert view["messages"] == []
    assert view["pending"] == {"t1": {"user": "alice", "content": "hello?", "timestamp": iso_at(0)}}

    view = fold(ContextProjection(10), turn("t1", "hello?", "hi alice"))[CONTEXT]
    assert view["pending"] == {}
    assert view["seq"] == 2
    assert view["channel"] == CHANNEL
    assert view["summary"] is None
    assert view["messages"] == [
        {
            "role": "user",
            "content": "hello?",
            "user_id": "alice",
            "timestamp": iso_at(0),
            "turn_id": "t1",
            "seq": 2,
        },
        {
            "role": "assistant",
            "content": "hi alice",
            "user_id": None,
            "timestamp": iso_at(1),
            "turn_id": "t1",
            "seq": 2,
        },
    ]


def test_context_keeps_only_the_last_max_messages() -> None:
    """With max_messages 4, three turns leave the last two turns' four messages."""
    events = turn("t1", "q1", "a1") + turn("t2", "q2", "a2") + turn("t3", "q3", "a3")
    view = fold(ContextProjection(4), events)[CONTEXT]
    assert contents(view) == ["q2", "a2", "q3", "a3"]
    view = fold(ContextProjection(3), events)[CONTEXT]
    assert contents(view) == ["a2", "q3", "a3"]


def test_context_drops_a_failed_turn_without_a_trace() -> None:
    """TurnFailed removes the pending question; no dangling message enters the context."""
    events = [*turn("t1", "q1", "a1"), admitted("t2", "q2"), failed("t2")]
    view = fold(ContextProjection(10), events)[CONTEXT]
    assert view["pending"] == {}
    assert contents(view) == ["q1", "a1"]


def test_context_interleaved_turns_each_keep_their_question() -> None:
    """Two turns in flight at once each pair with their own question, in completion order."""
    events: list[Event] = [
        admitted("t1", "slow question", user="alice"),
        admitted("t2", "fast question", user="bob"),
        completed("t2", "fast answer", user="bob"),
        completed("t1", "slow answer", user="alice"),
    ]
    view = fold(ContextProjection(10), events)[CONTEXT]
    assert contents(view) == ["fast question", "fast answer", "slow question", "slow answer"]
    assert [m["user_id"] for m in view["messages"]] == ["bob", None, "alice", None]


def test_context_reset_clears_messages_and_summary() -> None:
    """ContextReset empties the recent messages and the running summary."""
    events: list[Event] = [
        *turn("t1", "q1", "a1"),
        ContextSummarized(at=at(5), channel=CHANNEL, summary="s", through_seq=0, message_count=0),
        ContextReset(at=at(6), channel=CHANNEL, user="alice"),
    ]
    view = fold(ContextProjection(10), events)[CONTEXT]
    assert view["messages"] == []
    assert view["summary"] is None
    assert view["seq"] == 4


def test_context_summary_replaces_the_messages_it_covers() -> None:
    """ContextSummarized sets the summary and drops messages up to `through_seq`."""
    events = turn("t1", "q1", "a1") + turn("t2", "q2", "a2") + turn("t3", "q3", "a3")
    summary = ContextSummarized(
        at=at(9), channel=CHANNEL, summary="q1 and q2 were asked", through_seq=4, message_count=4
    )
    view = fold(ContextProjection(10), [*events, summary])[CONTEXT]
    assert view["summary"] == "q1 and q2 were asked"
    assert contents(view) == ["q3", "a3"]


def test_context_ignores_events_of_other_kinds() -> None:
    """Memory, persona and token events do not touch the context view."""
    projection = ContextProjection(10)
    for event in (added("deadbeef", "x"), spent("t", 1, 1), rejected("t")):
        assert projection.keys_for(event) == ()
    assert (
        projection.keys_for(PersonaSwitched(at=T0, channel=CHANNEL, user="a", persona="concise"))
        == ()
    )


# ------------------------------------------------------------------ memories


def test_memory_added_becomes_one_key() -> None:
    """MemoryAdded writes `memories.<channel>.<id>` with its data and times."""
    state = fold(MemoriesProjection(), [added("deadbeef", "Alice likes Python", t=3)])
    assert state == {
        memory_key(CHANNEL, "deadbeef"): {
            "id": "deadbeef",
            "channel": CHANNEL,
            "content": "Alice likes Python",
            "category": "fact",
            "importance": 4,
            "user_id": "alice",
            "created_at": iso_at(3),
            "accessed_at": iso_at(3),
            "seq": 1,
        }
    }


def test_recall_moves_accessed_at_of_the_recalled_memories_only() -> None:
    """MemoryRecalled updates accessed_at and seq of each listed memory; others stay."""
    recall = MemoryRecalled(
        at=at(60), channel=CHANNEL, user="bob", query="python", memory_ids=("aaaaaaaa", "ffffffff")
    )
    projection = MemoriesProjection()
    assert projection.keys_for(recall) == (
        memory_key(CHANNEL, "aaaaaaaa"),
        memory_key(CHANNEL, "ffffffff"),
    )
    state = fold(projection, [added("aaaaaaaa", "python a"), added("bbbbbbbb", "b"), recall])
    first = state[memory_key(CHANNEL, "aaaaaaaa")]
    assert (first["created_at"], first["accessed_at"], first["seq"]) == (iso_at(0), iso_at(60), 3)
    second = state[memory_key(CHANNEL, "bbbbbbbb")]
    assert (second["accessed_at"], second["seq"]) == (iso_at(0), 2)
    assert memory_key(CHANNEL, "ffffffff") not in state  # recalling a missing id creates nothing


def test_forget_deletes_the_key() -> None:
    """MemoryForgotten removes the memory; other memories stay."""
    events: list[Event] = [
        added("aaaaaaaa", "a"),
        added("bbbbbbbb", "b"),
        MemoryForgotten(at=at(5), channel=CHANNEL, user="bob", memory_id="aaaaaaaa"),
    ]
    assert list(fold(MemoriesProjection(), events)) == [memory_key(CHANNEL, "bbbbbbbb")]


# ------------------------------------------------------------------ settings


def test_settings_hold_the_latest_persona_and_who_set_it() -> None:
    """PersonaSwitched sets persona, changed_by and changed_at; a later switch wins."""
    events: list[Event] = [
        PersonaSwitched(at=at(1), channel=CHANNEL, user="alice", persona="concise"),
        PersonaSwitched(at=at(2), channel=CHANNEL, user="bob", persona="technical"),
        PersonaSwitched(at=at(3), channel="other", user=None, persona="creative"),
    ]
    state = fold(SettingsProjection(), events)
    assert state[settings_key(CHANNEL)] == {
        "channel": CHANNEL,
        "persona": "technical",
        "changed_by": "bob",
        "changed_at": iso_at(2),
        "seq": 2,
    }
    assert state[settings_key("other")]["changed_by"] is None
    assert SettingsProjection().keys_for(ContextReset(at=T0, channel=CHANNEL, user="a")) == ()


# ------------------------------------------------------------------ usage


def test_usage_counts_requests_rejections_and_tokens() -> None:
    """Admitted turns count as requests, rejections separately, TokensSpent adds tokens."""
    events: list[Event] = [
        admitted("t1", "q", t=0),
        spent("t1", 10, 20, t=1),
        completed("t1", "a", t=1),
        rejected("t2", t=2),
        admitted("t3", "q", t=3, reserved=250),
    ]
    view = fold(UsageProjection(), events)[usage_key("alice")]
    assert view["user"] == "alice"
    assert view["seq"] == 5
    assert view["day"] == "2024-05-17"
    assert (view["requests_today"], view["rejected_today"], view["tokens_today"]) == (2, 1, 30)
    assert (view["total_requests"], view["total_tokens"]) == (2, 30)
    assert view["recent_requests"] == [at(0).timestamp(), at(3).timestamp()]
    assert view["open_turns"] == {
        "t3": {
            "channel": CHANNEL,
            "admitted_at": iso_at(3),
            "admitted_seq": 5,
            "reserved_tokens": 250,
        }
    }


def test_usage_settlement_then_end_closes_the_open_turn() -> None:
    """TokensSpent zeroes the reservation; TurnCompleted or TurnFailed closes the turn."""
    key = usage_key("alice")
    state = fold(UsageProjection(), [admitted("t1", "q", reserved=500), admitted("t2", "q")])
    state = fold(UsageProjection(), [spent("t1", 7, 8)], state, first_seq=3)
    assert state[key]["open_turns"]["t1"]["reserved_tokens"] == 0
    assert state[key]["open_turns"]["t2"]["reserved_tokens"] == 100
    state = fold(UsageProjection(), [completed("t1", "a"), failed("t2")], state, first_seq=4)
    assert state[key]["open_turns"] == {}
    assert state[key]["tokens_today"] == 15


def test_usage_a_failed_turn_that_spent_tokens_settles_then_closes() -> None:
    """TokensSpent (estimated) then TurnFailed for one turn, as a call cut mid-stream records
    them: the tokens count, the reservation is released once and the turn is closed."""
    key = usage_key("alice")
    cut_short = msgspec.structs.replace(spent("t1", 40, 6), estimated=True)
    state = fold(
        UsageProjection(),
        [admitted("t1", "q", reserved=500), admitted("t2", "q", reserved=100), cut_short],
    )
    assert state[key]["open_turns"]["t1"]["reserved_tokens"] == 0
    state = fold(UsageProjection(), [failed("t1")], state, first_seq=4)
    view = state[key]
    assert list(view["open_turns"]) == ["t2"]
    assert (view["tokens_today"], view["total_tokens"]) == (46, 46)
    numbers = usage_numbers(cast(UsageView, view), at(2))
    assert (numbers.tokens_today, numbers.reserved_tokens) == (46, 100)


def test_usage_tokens_without_an_open_turn_still_count() -> None:
    """Spend outside a chat turn (e.g. summarize) counts against the day; no turn is opened."""
    view = fold(UsageProjection(), [spent("s1", 100, 50)])[usage_key("alice")]
    assert (view["tokens_today"], view["total_tokens"], view["open_turns"]) == (150, 150, {})


def test_usage_day_rollover_resets_day_counters_but_not_totals() -> None:
    """The first event of a new UTC day zeroes today's counters; totals and open turns stay."""
    events: list[Event] = [
        admitted("t1", "q", t=0),
        spent("t1", 10, 10, t=1),
        completed("t1", "a", t=1),
        rejected("t2", t=2),
        admitted("t3", "late", t=3),
        admitted("t4", "tomorrow", t=86400),
    ]
    view = fold(UsageProjection(), events)[usage_key("alice")]
    assert view["day"] == "2024-05-18"
    assert (view["requests_today"], view["rejected_today"], view["tokens_today"]) == (1, 0, 0)
    assert (view["total_requests"], view["total_tokens"]) == (3, 20)
    assert set(view["open_turns"]) == {"t3", "t4"}
    # Only the last hour of request times is kept.
    assert view["recent_requests"] == [at(86400).timestamp()]


def test_usage_day_never_moves_backwards() -> None:
    """An event stamped before midnight but folded after a new-day one keeps the new day."""
    midnight = 43200  # T0 is noon
    events: list[Event] = [
        admitted("t1", "q", t=midnight + 1),
        spent("t1", 40, 60, t=midnight + 2),
        admitted("t2", "from a lagging clock", t=midnight - 1),
    ]
    view = fold(UsageProjection(), events)[usage_key("alice")]
    assert view["day"] == "2024-05-18"
    assert (view["requests_today"], view["tokens_today"]) == (2, 100)


def test_usage_key_is_per_user_and_skips_events_without_one() -> None:
    """Each user has their own view; events naming no user touch none."""
    projection = UsageProjection()
    state = fold(projection, [admitted("t1", "q", user="alice"), admitted("t2", "q", user="bob")])
    assert set(state) == {usage_key("alice"), usage_key("bob")}
    assert projection.keys_for(spent("t", 1, 1, user=None)) == ()
    assert projection.keys_for(added("deadbeef", "x", user=None)) == ()
    summary = ContextSummarized(at=T0, channel=CHANNEL, summary="s", through_seq=1, message_count=1)
    assert projection.keys_for(summary) == ()


# ------------------------------------------------------------------ general properties


@pytest.mark.parametrize("projection", ALL_PROJECTIONS, ids=lambda p: p.name)
def test_apply_never_mutates_the_view_it_is_given(projection: Projection) -> None:
    """Each fold step leaves its input view deep-equal to a copy taken before the call."""
    values: dict[str, View] = {}
    applied = 0
    for seq, event in enumerate(mixed_history(), start=1):
        for key in projection.keys_for(event):
            current = values.get(key)
            before = copy.deepcopy(current)
            updated = projection.apply(key, current, event, seq)
            applied += 1
            assert current == before, f"{projection.name} mutated {key} on {type(event).__name__}"
            if updated is None:
                values.pop(key, None)
            else:
                values[key] = updated
    assert applied > 0


@pytest.mark.parametrize("projection", ALL_PROJECTIONS, ids=lambda p: p.name)
def test_folding_in_place_gives_what_apply_gives_after_every_event(projection: Projection) -> None:
    """`fold` (the replay's in-place step) and `apply` (the runner's) agree event by event."""
    applied: dict[str, View] = {}
    in_place: dict[str, View] = {}
    for seq, event in enumerate(mixed_history(), start=1):
        for key in projection.keys_for(event):
            for values, step in ((applied, projection.apply), (in_place, projection.fold)):
                updated = step(key, values.get(key), event, seq)
                if updated is None:
                    values.pop(key, None)
                else:
                    values[key] = updated
            assert in_place.get(key) == applied.get(key), f"{key} after {type(event).__name__}"
    assert in_place == applied
    assert applied


@pytest.mark.parametrize("projection", ALL_PROJECTIONS, ids=lambda p: p.name)
def test_events_outside_event_types_concern_no_key(projection: Projection) -> None:
    """A replay may skip a projection for event classes it does not list: they give no keys."""
    listed = 0
    for event in mixed_history():
        if type(event) in projection.event_types:
            listed += 1
        else:
            assert projection.keys_for(event) == (), f"{projection.name}: {type(event).__name__}"
    assert listed > 0


@pytest.mark.parametrize("projection", ALL_PROJECTIONS, ids=lambda p: p.name)
def test_results_record_the_sequence_they_include(projection: Projection) -> None:
    """Every value a fold writes records the sequence of the event that produced it."""
    for seq, event in enumerate(mixed_history(), start=1):
        for key in projection.keys_for(event):
            updated = projection.apply(key, None, event, seq)
            if updated is not None and not isinstance(event, MemoryRecalled):
                assert updated["seq"] == seq


@pytest.mark.parametrize("projection", ALL_PROJECTIONS, ids=lambda p: p.name)
def test_folding_the_same_events_twice_changes_nothing(projection: Projection) -> None:
    """Re-delivering the whole log (same sequences) onto the folded state is a no-op."""
    history = mixed_history()
    once = fold(projection, history)
    assert once, f"{projection.name} produced no views from the mixed history"
    snapshot = copy.deepcopy(once)
    twice = fold(projection, history, once)
    assert twice == snapshot
    assert once == snapshot
    assert fold(projection, history) == snapshot  # deterministic from scratch


@pytest.mark.parametrize("projection", ALL_PROJECTIONS, ids=lambda p: p.name)
def test_replaying_a_prefix_after_a_crash_converges(projection: Projection) -> None:
    """Re-applying any already-applied prefix, then the rest, gives the one-pass result."""
    history = mixed_history()
    expected = fold(projection, history)
    for cut in range(0, len(history) + 1, 3):
        partial = fold(projection, history[:cut])
        replayed = fold(projection, history, partial)
        assert replayed == expected, f"{projection.name} differs after replay from cut {cut}"


def test_mixed_history_ends_in_the_expected_views() -> None:
    """End state of the shared history, per view, as a whole-system check of the folds."""
    history = mixed_history()
    context = fold(ContextProjection(4), history)[CONTEXT]
    assert context["summary"] is None  # reset after the summary
    assert contents(context) == ["next day", "new day answer"]
    assert set(context["pending"]) == {"t5"}

    memories = fold(MemoriesProjection(), history)
    assert list(memories) == [memory_key(CHANNEL, "0badf00d")]

    settings = fold(SettingsProjection(), history)
    assert settings[settings_key(CHANNEL)]["persona"] == "concise"

    usage = fold(UsageProjection(), history)
    alice: dict[str, Any] = usage[usage_key("alice")]
    assert (alice["day"], alice["requests_today"], alice["tokens_today"]) == ("2024-05-18", 1, 10)
    assert (alice["total_requests"], alice["total_tokens"]) == (4, 110)
    assert set(alice["open_turns"]) == {"t5"}
    bob: dict[str, Any] = usage[usage_key("bob")]
    assert (bob["requests_today"], bob["rejected_today"], bob["open_turns"]) == (1, 1, {})
    assert usage_key("carol") in usage  # PersonaSwitched names carol


def test_usage_keeps_only_as_many_request_times_as_the_largest_window_limit() -> None:
    """recent_requests is capped at keep_requests, newest kept, however busy the user."""
    events = [admitted(f"t{n}", "q") for n in range(30)]
    view = fold(UsageProjection(keep_requests=7), events)[usage_key("alice")]
    assert len(view["recent_requests"]) == 7
    assert view["requests_today"] == 30
    assert (
        fold(UsageProjection(keep_requests=0), events)[usage_key("alice")]["recent_requests"] == []
    )


def test_reset_drops_turns_in_flight_from_the_new_context() -> None:
    """A turn admitted before a reset and completed after it does not enter the new context."""
    projection = ContextProjection(max_messages=10)
    events = [
        admitted("t1", "before"),
        ContextReset(at=at(1), channel=CHANNEL, user="alice"),
        completed("t1", "late answer"),
    ]
    view = fold(projection, events)[context_key(CHANNEL)]
    assert view["messages"] == []
    assert view["pending"] == {}


def test_a_busy_views_bucket_gathers_its_writes_longer_within_a_bound() -> None:
    """After a batch of few keys the next gathers for the least linger (a quiet log is in
    KV soon); the more keys the last batch wrote, the longer the next gathers, never past
    the maximum."""
    assert flush_linger(0) == FLUSH_LINGER_SECONDS
    assert FLUSH_LINGER_SECONDS < flush_linger(2) < flush_linger(20) < FLUSH_LINGER_MAX_SECONDS
    assert flush_linger(40) == flush_linger(10_000) == FLUSH_LINGER_MAX_SECONDS
