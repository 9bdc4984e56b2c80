"""`admit_event`: what makes a stored event inadmissible, and the reason each gets."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from llm_es.domain.events import ContextSummarized, Event, MemoryAdded, TokensSpent
from llm_es.domain.views import with_quarantined
from llm_es.service.health import ViewsStall
from llm_es.store.codec import UnknownEventError, encode_event
from llm_es.store.log import subject_of
from llm_es.store.quarantine import (
    MAX_CLOCK_SKEW_SECONDS,
    InadmissibleEventError,
    Quarantine,
    admit_event,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NOW_NS = int(NOW.timestamp() * 1e9)


def spent(**changes: Any) -> TokensSpent:
    fields: dict[str, Any] = {
        "at": NOW,
        "channel": "lobby",
        "user": "alice",
        "turn_id": "t" * 32,
        "purpose": "chat",
        "provider": "ollama",
        "model": "m",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "estimated": False,
    }
    return TokensSpent(**(fields | changes))


def stored(event: Event, **body_changes: Any) -> bytes:
    body = orjson.loads(encode_event(event))
    body.update(body_changes)
    return orjson.dumps(body)


def test_a_genuine_event_is_admitted_as_written() -> None:
    """The event on its own subject, stamped before its append, comes back equal."""
    event = spent()
    assert admit_event(7, subject_of(event), encode_event(event), NOW_NS) == event


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"prompt_tokens": -1_000_000}, "Expected `int` >= 0 - at `$.prompt_tokens`"),
        ({"completion_tokens": 10**12}, "Expected `int` <= 100000000"),
        ({"prompt_tokens": "abc"}, "Expected `int`, got `str` - at `$.prompt_tokens`"),
        ({"cost": -0.5}, "Expected `float` >= 0.0 - at `$.cost`"),
    ],
)
def test_impossible_values_are_refused_by_the_decoder(changes: dict[str, Any], reason: str) -> None:
    """Negative, huge or wrong-typed numbers fail decoding (an UnknownEventError)."""
    event = spent()
    with pytest.raises(UnknownEventError, match=reason.replace("$", r"\$").replace(".", r"\.")):
        admit_event(7, subject_of(event), stored(event, **changes), NOW_NS)


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("llm.ev.lobby.mallory.TokensSpent", "subject names another user than the body"),
        ("llm.ev.other.alice.TokensSpent", "subject names another channel than the body"),
        ("llm.ev.lobby.alice.TurnAdmitted", "subject names another event type than the body"),
        ("TokensSpent", "subject is not llm.ev.<channel>.<user>.<type>"),
        # One token deeper: `llm.ev.*.alice.>` (the admission boundary) would not match it.
        ("llm.ev.x.lobby.alice.TokensSpent", "subject is not llm.ev.<channel>.<user>.<type>"),
        ("other.lobby.alice.TokensSpent", "subject is not llm.ev.<channel>.<user>.<type>"),
    ],
)
def test_the_subject_must_name_the_body(subject: str, reason: str) -> None:
    """Channel, user and type tokens of the subject are the body's."""
    with pytest.raises(InadmissibleEventError, match=f"^TokensSpent: {re.escape(reason)}$"):
        admit_event(7, subject, encode_event(spent()), NOW_NS)


def test_a_memory_names_its_user_by_user_id() -> None:
    """MemoryAdded's user token is its `user_id`; another channel in the body is refused."""
    memory = MemoryAdded(
        at=NOW,
        memory_id="abcd1234",
        channel="evil",
        user_id="mallory",
        content="x",
        category="fact",
        importance=3,
    )
    assert admit_event(3, "llm.ev.evil.mallory.MemoryAdded", encode_event(memory), NOW_NS)
    with pytest.raises(InadmissibleEventError, match="another channel"):
        admit_event(3, subject_of(memory), stored(memory, channel="victim"), NOW_NS)


def test_a_time_past_the_append_by_more_than_the_skew_is_refused() -> None:
    """Up to the skew after the append time is a clock difference; past it, a forgery."""
    skew = timedelta(seconds=MAX_CLOCK_SKEW_SECONDS)
    near = spent(at=NOW + skew - timedelta(seconds=1))
    assert admit_event(7, subject_of(near), encode_event(near), NOW_NS) == near
    far = spent(at=NOW + timedelta(days=3650))
    with pytest.raises(InadmissibleEventError, match=r"time is 315360000 s after its append"):
        admit_event(7, subject_of(far), encode_event(far), NOW_NS)
    # An unknown append time (0) checks nothing of the time.
    assert admit_event(7, subject_of(far), encode_event(far), 0) == far


def test_a_summary_cannot_cover_events_after_itself() -> None:
    """`through_seq` must be below the summary's own sequence."""
    summary = ContextSummarized(
        at=NOW, channel="lobby", summary="s", through_seq=9, message_count=3
    )
    assert admit_event(10, subject_of(summary), encode_event(summary), NOW_NS) == summary
    with pytest.raises(InadmissibleEventError, match="summary covers events after"):
        admit_event(9, subject_of(summary), encode_event(summary), NOW_NS)


def test_a_quarantine_counts_each_sequence_once_and_logs_no_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One ERROR per sequence with the reason; the event's text never appears."""
    quarantine = Quarantine("views")
    event = spent(model="SECRET-MODEL-TEXT")
    data = stored(event, prompt_tokens=-5)
    for _ in range(2):
        assert quarantine.admit(4, subject_of(event), data, NOW_NS) is None
    assert (quarantine.count, quarantine.sequences) == (1, [4])
    (record,) = [r for r in caplog.records if "event_quarantined" in r.getMessage()]
    assert record.levelname == "ERROR"
    assert "seq=4" in record.getMessage()
    assert "SECRET" not in caplog.text


def test_the_quarantine_view_counts_all_and_lists_the_first() -> None:
    """`with_quarantined` is a pure fold: the count goes on past the listed events."""
    view = None
    for seq in range(1, 106):
        view = with_quarantined(view, seq, "why")
    assert view is not None
    assert (view["seq"], view["count"], len(view["events"])) == (105, 105, 100)


def test_the_views_are_down_when_they_miss_what_the_probe_before_saw() -> None:
    """`ViewsStall`: behind the log's end as the previous probe read it means stalled;
    behind only the end read now is normal lag."""
    position = 0
    stall = ViewsStall(lambda: position)
    stall.observe(10)
    assert stall() is False  # nothing was asked of the views yet
    position = 10
    stall.observe(25)
    assert stall() is False  # reached 10; 25 is for the next probe
    stall.observe(30)
    assert stall() is True  # still at 10 although 25 was there a whole probe ago
    position = 30
    stall.observe(30)
    assert stall() is False
