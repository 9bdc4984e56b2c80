"""The turn rule (`OpenTurns`): ends and spends name an open turn of their user, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from llm_es.domain.events import Event, TokensSpent, TurnAdmitted, TurnCompleted, TurnFailed
from llm_es.domain.turn_order import UNKNOWN_TURN_TRUST_NS, OpenTurns
from llm_es.domain.views import OPEN_TURNS_FIELD
from llm_es.store.codec import encode_event
from llm_es.store.log import subject_of
from llm_es.store.quarantine import Quarantine
from projections.buckets import checkpoint_value, open_turns_at

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NOW_NS = int(NOW.timestamp() * 1e9)
TURN = "a" * 32


def admitted(turn_id: str = TURN, user: str = "alice") -> TurnAdmitted:
    return TurnAdmitted(
        at=NOW,
        channel="lobby",
        user=user,
        turn_id=turn_id,
        source="chat",
        persona="default",
        provider="ollama",
        model="m",
        message="hi",
        reserved_tokens=100,
        max_tokens=50,
    )


def spent(turn_id: str = TURN, user: str | None = "alice", **changes: Any) -> TokensSpent:
    fields: dict[str, Any] = {
        "at": NOW,
        "channel": "lobby",
        "user": user,
        "turn_id": turn_id,
        "purpose": "chat",
        "provider": "ollama",
        "model": "m",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "estimated": False,
    }
    return TokensSpent(**(fields | changes))


def completed(turn_id: str = TURN, user: str = "alice") -> TurnCompleted:
    return TurnCompleted(
        at=NOW,
        channel="lobby",
        user=user,
        turn_id=turn_id,
        content="hello",
        provider="ollama",
        model="m",
        latency_ms=1.0,
        finish_reason="stop",
    )


def failed(turn_id: str = TURN, user: str = "alice") -> TurnFailed:
    return TurnFailed(
        at=NOW,
        channel="lobby",
        user=user,
        turn_id=turn_id,
        error_type="abandoned",
        error="gone",
    )


def verdicts(turns: OpenTurns, *events: Event, stored_ns: int = NOW_NS) -> list[str | None]:
    return [turns.admit(event, stored_ns) for event in events]


def test_a_turn_as_the_plugin_writes_it_passes() -> None:
    """Admission, spends, end: every event admitted, and the turn is closed after."""
    turns = OpenTurns()
    assert verdicts(turns, admitted(), spent(), spent(), completed()) == [None] * 4
    assert len(turns) == 0


def test_an_end_or_spend_of_a_turn_never_admitted_is_refused() -> None:
    """A made-up turn id charges no one and ends nothing."""
    turns = OpenTurns()
    reasons = verdicts(turns, spent(), completed(), failed())
    assert all(r is not None and "not open" in r for r in reasons)
    assert reasons[0] is not None
    assert reasons[0].startswith("charges")


def test_only_the_first_end_of_a_turn_stands() -> None:
    """A second end (a late owner's end after recovery's close) and a spend after it are
    refused; the first end closed the turn."""
    turns = OpenTurns()
    assert verdicts(turns, admitted(), failed()) == [None, None]
    late = verdicts(turns, spent(), completed())
    assert all(r is not None and "not open" in r for r in late)


def test_a_turn_cannot_be_ended_or_charged_for_another_user() -> None:
    """The turn is alice's: bob's spend or end naming it is refused, and it stays open."""
    turns = OpenTurns()
    turns.admit(admitted(), NOW_NS)
    assert verdicts(turns, spent(user="bob"), completed(user="bob")) == [
        "charges a turn of another user",
        "ends a turn of another user",
    ]
    assert turns.snapshot() == {TURN: "alice"}


def test_an_admission_of_an_open_turn_is_refused() -> None:
    """The same turn admitted twice would reserve its tokens twice."""
    turns = OpenTurns()
    assert verdicts(turns, admitted(), admitted()) == [None, "admits a turn that is already open"]


def test_a_context_summary_spend_needs_no_turn() -> None:
    """A summary's spend has no user and no admission; a user's spend without a turn is
    refused whatever its purpose."""
    turns = OpenTurns()
    assert turns.admit(spent(user=None, purpose="context_summary"), NOW_NS) is None
    assert turns.admit(spent(purpose="context_summary"), NOW_NS) is not None
    assert turns.admit(spent(user=None, purpose="chat"), NOW_NS) is not None


def test_a_reader_resumes_exactly_from_a_checkpoint_of_open_turns() -> None:
    """The open turns of a checkpoint are ended and charged after it; unknown ones are not."""
    turns = OpenTurns(OpenTurns().snapshot() | {TURN: "alice"})
    assert verdicts(turns, spent(), completed()) == [None, None]
    assert turns.admit(completed("b" * 32), NOW_NS) is not None


def test_a_reader_started_mid_log_trusts_unknown_turns_for_a_while_in_stream_time() -> None:
    """Turns opened before the reader's first event end within the trust window; after it
    (by the stream's append time, which no writer chooses) the rule is exact again, even
    for an event whose own `at` claims to be old."""
    turns = OpenTurns(started_mid_log=True)
    assert turns.admit(completed("b" * 32), NOW_NS) is None
    assert turns.admit(spent("c" * 32), NOW_NS + UNKNOWN_TURN_TRUST_NS) is None
    late = NOW_NS + UNKNOWN_TURN_TRUST_NS + 1
    old_looking = spent("d" * 32, at=NOW - timedelta(days=365))
    assert turns.admit(old_looking, late) is not None


def test_noted_events_keep_the_state_of_another_readers_verdicts() -> None:
    """`note` follows events another reader admitted: an admission opens, an end closes."""
    turns = OpenTurns()
    turns.note(admitted())
    assert turns.snapshot() == {TURN: "alice"}
    turns.note(completed())
    assert turns.snapshot() == {}


def test_the_quarantine_applies_the_rule_with_its_reason() -> None:
    """With open turns given, `Quarantine` refuses a forged spend and names the type."""
    quarantine = Quarantine("test", turns=OpenTurns())
    event = spent()
    reason = quarantine.admit_or_reason(3, subject_of(event), encode_event(event), NOW_NS)
    assert isinstance(reason, str)
    assert reason.startswith("TokensSpent: charges a turn")
    alone = Quarantine("test")
    assert alone.admit_or_reason(3, subject_of(event), encode_event(event), NOW_NS) == event


def test_the_views_resume_from_the_open_turns_of_their_lowest_checkpoint() -> None:
    """A fold resuming at a checkpoint takes that checkpoint's open turns; from 0 it knows
    every turn; without recorded turns, or past a cut of the log, it trusts for a while."""
    at_five = {"seq": 5, OPEN_TURNS_FIELD: {TURN: "alice"}}
    exact = open_turns_at(5, [{"seq": 9, OPEN_TURNS_FIELD: {}}, at_five], first_seq=1)
    assert exact.snapshot() == {TURN: "alice"}
    assert exact.admit(completed("b" * 32), NOW_NS) is not None
    assert open_turns_at(0, [None], first_seq=1).admit(completed(), NOW_NS) is not None
    older = open_turns_at(5, [{"seq": 5}], first_seq=1)
    cut = open_turns_at(5, [at_five], first_seq=8)
    for trusting in (older, cut):
        assert trusting.admit(completed("b" * 32), NOW_NS) is None


def test_a_reader_in_its_trust_window_does_not_claim_to_know_every_open_turn() -> None:
    """Mid-log, turns opened before the start may still be open: until an event stored
    past the window, the snapshot is None and a checkpoint omits the open turns (so a
    fold resuming from it trusts again); after it, the snapshot is whole."""
    turns = OpenTurns(started_mid_log=True)
    turns.admit(admitted(), NOW_NS)
    assert turns.snapshot() is None
    assert checkpoint_value(7, turns.snapshot()) == {"seq": 7}
    turns.admit(admitted("b" * 32), NOW_NS + UNKNOWN_TURN_TRUST_NS + 1)
    assert turns.snapshot() == {TURN: "alice", "b" * 32: "alice"}
    assert checkpoint_value(8, turns.snapshot()) == {"seq": 8, OPEN_TURNS_FIELD: turns.snapshot()}
