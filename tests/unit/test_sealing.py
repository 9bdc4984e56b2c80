"""Sealed text: AES-GCM under a named key, readable only with that key and that name."""

from __future__ import annotations

import pytest

from llm_es.domain.events import (
    ContextSummarized,
    MemoryAdded,
    MemoryForgotten,
    MemoryRecalled,
    TurnAdmitted,
    UserErased,
)
from llm_es.domain.personal_data import (
    SEALED_PREFIX,
    erased_key_names,
    memory_key_name,
    sealing_plan,
    text_length,
)
from llm_es.store.sealing import SealBroken, new_key, open_sealed, seal, sealed_key


def test_a_sealed_text_opens_with_its_key_only() -> None:
    """Round trip with the key; another key (a destroyed one made again) fails clearly."""
    key = new_key()
    sealed = seal(key, "memory.lobby.0a0b0c0d", "The door code is 4711 ✓")
    assert sealed.startswith(f"{SEALED_PREFIX}memory.lobby.0a0b0c0d:23:")
    assert text_length(sealed) == len("The door code is 4711 ✓") == 23
    assert "4711" not in sealed
    assert open_sealed(key, sealed) == "The door code is 4711 ✓"
    with pytest.raises(SealBroken, match=r"cannot open text sealed by memory\.lobby\.0a0b0c0d"):
        open_sealed(new_key(), sealed)


def test_the_key_name_is_bound_to_the_text() -> None:
    """A value moved under another key's name does not open, even with the right key."""
    key = new_key()
    sealed = seal(key, "memory.a.00000001", "secret")
    moved = sealed.replace("memory.a.00000001", "memory.a.00000002")
    assert sealed_key(moved) == "memory.a.00000002"
    with pytest.raises(SealBroken):
        open_sealed(key, moved)


def test_two_seals_of_one_text_differ() -> None:
    """A fresh nonce per value: equal texts do not give equal values."""
    key = new_key()
    assert seal(key, "k", "same") != seal(key, "k", "same")


@pytest.mark.parametrize("text", ["plain text", "", "sealed:1:", "sealed:1:no-colon-after"])
def test_text_that_is_not_sealed_names_no_key(text: str) -> None:
    """Plain text (events from before sealing) and malformed prefixes are no sealed values."""
    assert sealed_key(text) is None


def test_a_facts_text_is_sealed_under_its_own_key_and_nothing_else_is() -> None:
    """MemoryAdded's content goes under `memory.<channel token>.<id>`; a forget seals nothing."""
    added = MemoryAdded(
        memory_id="0a0b0c0d",
        channel="#ops room",
        user_id="alice",
        content="fact",
        category="fact",
        importance=3,
    )
    assert sealing_plan(added) == ("memory.=23ops=20room.0a0b0c0d", ("content",))
    assert memory_key_name("#ops room", "0a0b0c0d") == "memory.=23ops=20room.0a0b0c0d"
    forgotten = MemoryForgotten(channel="#ops room", user="bob", memory_id="0a0b0c0d")
    assert sealing_plan(forgotten) is None


def test_what_a_user_said_and_a_summary_have_their_own_keys() -> None:
    """A turn's message and answer go under the asking user's key, a recall's query under
    the recaller's, a summary under its channel's; an erasure names those keys."""
    admitted = TurnAdmitted(
        turn_id="t1",
        channel="lobby",
        user="alice",
        source="command",
        persona="default",
        provider="ollama",
        model="m",
        message="hi",
        reserved_tokens=10,
        max_tokens=10,
    )
    assert sealing_plan(admitted) == ("user.alice", ("message",))
    recalled = MemoryRecalled(channel="lobby", user=None, query="tea", memory_ids=())
    assert sealing_plan(recalled) == ("user._", ("query",))
    summarized = ContextSummarized(channel="lobby", summary="s", through_seq=3, message_count=2)
    assert sealing_plan(summarized) == ("summary.lobby", ("summary",))
    erased = UserErased(user="alice", channels=("lobby", "b"), memories=0)
    assert erased_key_names(erased) == ["user.alice", "summary.lobby", "summary.b"]


def test_a_sealed_texts_length_survives_its_erasure() -> None:
    """The plain length is part of the sealed form: figures need no key."""
    sealed = seal(new_key(), "user.alice", "x" * 42)
    assert text_length(sealed) == 42
    assert text_length("plain") == 5
