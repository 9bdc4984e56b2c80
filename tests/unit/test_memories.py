"""Tests of llm_es.domain.memories: memory ids, keyword ranking, remember/recall/forget deciders."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from llm_es.domain.events import MemoryAdded, MemoryForgotten, MemoryRecalled
from llm_es.domain.memories import (
    decide_forget,
    decide_recall,
    decide_remember,
    keywords,
    new_memory_id,
    normalize_memory_id,
    rank_memories,
    recall_query,
    relevance,
)
from llm_es.domain.views import MemoryView
from llm_es.errors import ValidationError

NOW = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)
HEX8 = re.compile(r"[0-9a-f]{8}")


def memory(memory_id: str, content: str, *, importance: int = 3, seq: int = 1) -> MemoryView:
    return {
        "id": memory_id,
        "channel": "general",
        "content": content,
        "category": "fact",
        "importance": importance,
        "user_id": "alice",
        "created_at": "2024-05-17T11:00:00Z",
        "accessed_at": "2024-05-17T11:00:00Z",
        "seq": seq,
    }


def ids(found: list[MemoryView]) -> list[str]:
    return [m["id"] for m in found]


def draws(*values: str) -> Iterator[str]:
    yield from values


def test_new_ids_never_repeat_one_already_taken() -> None:
    """Drawing from a source that repeats itself still gives ids no memory uses yet."""
    taken: set[str] = set()
    source = itertools.cycle(f"{n:08x}" for n in range(50))
    for _ in range(50):
        memory_id = new_memory_id(taken, lambda: next(source))
        assert HEX8.fullmatch(memory_id)
        assert memory_id not in taken
        taken.add(memory_id)


def test_new_id_draws_again_on_collision() -> None:
    """A drawn id that is taken is skipped; the next free one is used."""
    drawn = draws("aaaaaaaa", "aaaaaaaa", "bbbbbbbb", "cccccccc")
    assert new_memory_id({"aaaaaaaa"}, lambda: next(drawn)) == "bbbbbbbb"


def test_new_id_gives_up_after_a_bounded_number_of_draws() -> None:
    """If every draw collides the decider fails instead of looping forever."""
    calls = 0

    def always_taken() -> str:
        nonlocal calls
        calls += 1
        return "deadbeef"

    with pytest.raises(RuntimeError):
        new_memory_id({"deadbeef"}, always_taken)
    assert 1 < calls <= 1000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("deadbeef", "deadbeef"), ("DEADBEEF", "deadbeef"), ("  0aB1c2D3 \n", "0ab1c2d3")],
)
def test_normalize_memory_id_accepts_8_hex_any_case(raw: str, expected: str) -> None:
    """Ids are compared lower-case with surrounding whitespace ignored."""
    assert normalize_memory_id(raw) == expected


@pytest.mark.parametrize(
    "raw", ["deadbee", "deadbeef0", "deadbeeg", "dead beef", "0xdeadbe", "déadbeef"]
)
def test_normalize_memory_id_rejects_anything_else(raw: str) -> None:
    """Anything but 8 hex digits is a ValidationError naming the `memory_id` field."""
    with pytest.raises(ValidationError, match="Invalid memory ID") as caught:
        normalize_memory_id(raw)
    assert caught.value.field == "memory_id"


@pytest.mark.parametrize("raw", ["", "   ", "\t\n"])
def test_a_blank_memory_id_is_nothing_to_forget(raw: str) -> None:
    """A blank id says so in neutral words: each surface adds its own usage text."""
    with pytest.raises(ValidationError) as caught:
        normalize_memory_id(raw)
    assert (str(caught.value), caught.value.field) == ("Nothing to forget", "memory_id")


def test_recall_query_is_trimmed_and_blank_is_nothing_to_recall() -> None:
    """A query loses its surrounding blanks; a blank one is a neutral ValidationError."""
    assert recall_query("  launch plans \n") == "launch plans"
    with pytest.raises(ValidationError) as caught:
        recall_query(" \t ")
    assert (str(caught.value), caught.value.field) == ("Nothing to recall", "query")


def test_keywords_are_lower_case_without_stopwords() -> None:
    """Keywords drop case, punctuation and stopwords."""
    assert keywords("What is THE deadline, Alice?") == {"deadline", "alice"}
    assert keywords("the and of to") == set()


def test_more_matching_words_rank_first() -> None:
    """Keyword overlap decides first, even over higher importance and newer memories."""
    memories = [
        memory("00000001", "The deadline is Friday", importance=5, seq=9),
        memory("00000002", "The Python deadline is Friday", importance=1, seq=1),
    ]
    assert ids(rank_memories("python deadline", memories, 5)) == ["00000002", "00000001"]


def test_equal_overlap_ranks_by_importance_then_recency() -> None:
    """With the same overlap, higher importance first; with that equal too, the newest first."""
    memories = [
        memory("00000001", "Alice likes tea", importance=2, seq=1),
        memory("00000002", "Alice likes coffee", importance=5, seq=2),
        memory("00000003", "Alice likes cocoa", importance=2, seq=7),
        memory("00000004", "Alice plays chess", importance=2, seq=4),
    ]
    assert ids(rank_memories("alice", memories, 10)) == [
        "00000002",
        "00000003",
        "00000004",
        "00000001",
    ]


def test_matching_is_case_insensitive() -> None:
    """Query and memory case do not matter."""
    memories = [memory("00000001", "alice likes PYTHON")]
    assert ids(rank_memories("Python ALICE", memories, 5)) == ["00000001"]


def test_stopwords_are_ignored() -> None:
    """A query of stopwords finds nothing; stopwords shared with a memory add no score."""
    memories = [
        memory("00000001", "the cat is on the mat", importance=5, seq=5),
        memory("00000002", "a dog barked", importance=1, seq=1),
    ]
    assert rank_memories("the is on", memories, 5) == []
    assert ids(rank_memories("the dog is here", memories, 5)) == ["00000002"]


def test_word_prefixes_match_but_inner_substrings_do_not() -> None:
    """A query word of 3+ letters matches a memory word it starts; never the middle of a word."""
    memories = [
        memory("00000001", "Alice writes Python daily"),
        memory("00000002", "Bob teaches education"),
    ]
    assert ids(rank_memories("pyth", memories, 5)) == ["00000001"]
    assert rank_memories("cat", memories, 5) == []
    assert rank_memories("py", memories, 5) == []  # too short to count as a prefix
    assert ids(rank_memories("education", memories, 5)) == ["00000002"]


def test_relevance_counts_exactly_the_query_words_a_memory_has_or_starts() -> None:
    """The bisection lookup scores like the plain definition: a query word counts when the
    memory has it, or (3+ letters) has a word starting with it."""
    texts = [
        "cats and catalogs sit on the catwalk",
        "Python pythons pyramid",
        "a b ab abc abcd",
        "zebra zeal zealous zero",
        "",
    ]
    queries = ["cat", "cats", "catalog", "ca", "pyt", "py", "abc", "ab", "zeal", "zer", "zz", "a"]
    for text in texts:
        words = keywords(text)
        for query in queries:
            wanted = sum(
                1
                for q in keywords(query)
                if q in words or (len(q) >= 3 and any(w.startswith(q) for w in words))
            )
            assert relevance(keywords(query), memory("00000001", text)) == wanted, (text, query)


def test_limit_bounds_the_result() -> None:
    """At most `limit` memories come back, the best ones; limit 0 gives none."""
    memories = [memory(f"0000000{n}", f"fact {n} about python", importance=n) for n in range(6)]
    assert ids(rank_memories("python", memories, 2)) == ["00000005", "00000004"]
    assert rank_memories("python", memories, 0) == []


def test_nothing_matches() -> None:
    """A query sharing no keyword with any memory finds nothing."""
    assert rank_memories("rust", [memory("00000001", "Alice likes Python")], 5) == []
    assert rank_memories("python", [], 5) == []


def test_decide_remember_strips_content_and_uses_a_free_id() -> None:
    """Remember makes a MemoryAdded with trimmed content, the given fields and the first
    id drawn that no memory of the channel uses."""
    drawn = draws("deadbeef", "0badf00d")
    event = decide_remember(
        channel="general",
        user="alice",
        content="  The deadline is Friday \n",
        category="fact",
        importance=4,
        existing_ids={"deadbeef"},
        new_id=lambda: next(drawn),
        now=NOW,
        **CAPS,
    )
    assert isinstance(event, MemoryAdded)
    assert event.memory_id == "0badf00d"
    assert (event.channel, event.user_id, event.content) == (
        "general",
        "alice",
        "The deadline is Friday",
    )
    assert (event.category, event.importance, event.at) == ("fact", 4, NOW)


def test_decide_remember_rejects_empty_content() -> None:
    """Blank content is a neutral ValidationError (no `!chat` syntax: the domain serves
    every surface)."""
    with pytest.raises(ValidationError) as caught:
        decide_remember(
            channel="general",
            user=None,
            content=" \t ",
            category="fact",
            importance=3,
            existing_ids=(),
            new_id=lambda: "deadbeef",
            now=NOW,
            **CAPS,
        )
    assert (str(caught.value), caught.value.field) == ("Nothing to remember", "content")


CAPS = {"max_length": 30, "max_memories": 2}


@pytest.mark.parametrize(
    ("content", "existing", "error"),
    [
        ("x" * 31, (), "Memory too long: 31 characters (limit 30)"),
        (
            "a fact",
            ("00000001", "00000002"),
            "Memory limit reached: this channel keeps at most 2 memories; forget one first",
        ),
    ],
)
def test_decide_remember_enforces_the_caps(
    content: str, existing: tuple[str, ...], error: str
) -> None:
    """A fact longer than `max_length` (after trimming), or one more than `max_memories` in
    the channel, is refused with a neutral ValidationError before any event is made."""
    with pytest.raises(ValidationError) as caught:
        decide_remember(
            channel="general",
            user=None,
            content=f"  {content}  ",
            category="fact",
            importance=3,
            existing_ids=existing,
            new_id=lambda: "deadbeef",
            now=NOW,
            **CAPS,
        )
    assert (str(caught.value), caught.value.field) == (error, "content")


def test_decide_recall_records_the_ranked_ids() -> None:
    """Recall returns the ranked memories and a MemoryRecalled listing them in that order."""
    memories = [
        memory("00000001", "Alice likes Python", importance=1),
        memory("00000002", "Alice and Bob like Python", importance=5),
    ]
    found, event = decide_recall(
        channel="general", user="bob", query="python", memories=memories, limit=5, now=NOW
    )
    assert ids(found) == ["00000002", "00000001"]
    assert isinstance(event, MemoryRecalled)
    assert event.memory_ids == ("00000002", "00000001")
    assert (event.channel, event.user, event.query, event.at) == ("general", "bob", "python", NOW)


def test_decide_recall_without_matches_records_nothing() -> None:
    """No match: an empty list and no event (nothing was accessed)."""
    found, event = decide_recall(
        channel="general",
        user="bob",
        query="rust",
        memories=[memory("00000001", "Alice likes Python")],
        limit=5,
        now=NOW,
    )
    assert found == []
    assert event is None


def test_decide_forget() -> None:
    """Forgetting an existing memory yields MemoryForgotten; an unknown one yields None."""
    event = decide_forget(channel="general", user="bob", memory_id="deadbeef", exists=True, now=NOW)
    assert isinstance(event, MemoryForgotten)
    assert (event.channel, event.user, event.memory_id, event.at) == (
        "general",
        "bob",
        "deadbeef",
        NOW,
    )
    missing = decide_forget(
        channel="general", user="bob", memory_id="deadbeef", exists=False, now=NOW
    )
    assert missing is None
