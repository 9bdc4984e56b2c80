"""Tests of llm_es.domain.channel: resetting a channel's context and switching its persona."""

from __future__ import annotations

from datetime import UTC, datetime

from llm_es.domain.channel import decide_persona_switch, decide_reset
from llm_es.domain.events import ContextReset, PersonaSwitched

NOW = datetime(2024, 5, 17, 20, 0, 0, tzinfo=UTC)
PERSONAS = ("default", "concise", "technical", "creative")


def test_reset_is_a_context_reset_of_the_channel_by_the_user() -> None:
    """A reset records who reset which channel, at the time given."""
    event = decide_reset(channel="lobby", user="alice", now=NOW)
    assert isinstance(event, ContextReset)
    assert (event.channel, event.user, event.at) == ("lobby", "alice", NOW)


def test_a_known_persona_is_switched_to_in_lower_case() -> None:
    """Case and surrounding blanks do not count: " Concise " switches to `concise`."""
    event = decide_persona_switch(
        channel="lobby", user="alice", requested=" Concise ", personas=PERSONAS, now=NOW
    )
    assert isinstance(event, PersonaSwitched)
    assert (event.channel, event.user, event.persona, event.at) == (
        "lobby",
        "alice",
        "concise",
        NOW,
    )


def test_an_unknown_persona_switches_nothing() -> None:
    """No persona of that name: no event (the service answers with the list)."""
    assert (
        decide_persona_switch(
            channel="lobby", user=None, requested="pirate", personas=PERSONAS, now=NOW
        )
        is None
    )
