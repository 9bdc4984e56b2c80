"""Memory deciders: remember, recall (keyword ranking) and forget, without I/O.

Ids come from the caller (`new_id` draws a candidate memory id), so a test can
fix them; errors are neutral `ValidationError`s: each surface says how to use it.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime

from llm_es.domain.events import MemoryAdded, MemoryForgotten, MemoryRecalled
from llm_es.domain.views import MemoryView
from llm_es.errors import ValidationError

MEMORY_ID = re.compile(r"[0-9a-f]{8}")
DEFAULT_IMPORTANCE = 3
MEMORY_KEYWORDS_CACHED = 8192
"""Memory texts whose keywords are remembered (ranking runs on every chat turn)."""
_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    """
    a an and are as at be but by do for from has have he her his i in is it its me my of
    on or our she so that the their them they this to us was we were what when where
    which who why will with you your
    """.split()  # noqa: SIM905  (the list literal ruff wants is 51 lines of one word)
)


def new_memory_id(existing: Iterable[str], draw: Callable[[], str]) -> str:
    """A fresh id from `draw` (8 hex digits) that no memory of the channel uses."""
    taken = set(existing)
    for _ in range(64):
        candidate = draw()
        if candidate not in taken:
            return candidate
    raise RuntimeError("could not find a free memory id")  # 2^32 ids: unreachable in practice


def normalize_memory_id(raw: str) -> str:
    """Memory ids are 8 hex digits, compared case-insensitively; blank is nothing to forget."""
    memory_id = raw.strip().lower()
    if not memory_id:
        raise ValidationError("Nothing to forget", "memory_id")
    if not MEMORY_ID.fullmatch(memory_id):
        raise ValidationError(
            f"Invalid memory ID: {raw.strip()!r} (expected 8 hex digits)", "memory_id"
        )
    return memory_id


def recall_query(raw: str) -> str:
    """What a recall looks for: the text without surrounding blanks; blank is an error."""
    query = raw.strip()
    if not query:
        raise ValidationError("Nothing to recall", "query")
    return query


def keywords(text: str) -> set[str]:
    """Lower-case words that carry meaning (stopwords dropped)."""
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


@functools.lru_cache(maxsize=MEMORY_KEYWORDS_CACHED)
def _memory_keywords(content: str) -> tuple[str, ...]:
    # Sorted, so a prefix lookup is one bisection. A memory's text never changes,
    # and every chat turn ranks the channel's memories (twice: to size the
    # reservation, then for the prompt sent).
    return tuple(sorted(keywords(content)))


def relevance(query_words: set[str], memory: MemoryView) -> int:
    """How many query words a memory contains (whole word or word prefix)."""
    memory_words = _memory_keywords(memory["content"])
    size = len(memory_words)
    score = 0
    for word in query_words:
        # The first memory word >= `word` is `word` itself or, if any memory word
        # starts with it, one of those. A prefix, not any substring: "cat" finds
        # "cats" but not "education".
        index = bisect.bisect_left(memory_words, word)
        if index < size:
            found = memory_words[index]
            if found == word or (len(word) >= 3 and found.startswith(word)):
                score += 1
    return score


def rank_memories(query: str, memories: Sequence[MemoryView], limit: int) -> list[MemoryView]:
    """Memories matching the query: most matching words, then importance, then newest."""
    query_words = keywords(query)
    if not query_words or limit <= 0:
        return []
    scored = [(relevance(query_words, m), m) for m in memories]
    matches = [(score, m) for score, m in scored if score > 0]
    matches.sort(key=lambda pair: (pair[0], pair[1]["importance"], pair[1]["seq"]), reverse=True)
    return [m for _, m in matches[:limit]]


def decide_remember(
    *,
    channel: str,
    user: str | None,
    content: str,
    category: str,
    importance: int,
    existing_ids: Collection[str],
    new_id: Callable[[], str],
    now: datetime,
    max_length: int,
    max_memories: int,
) -> MemoryAdded:
    """Remember a fact in a channel under a fresh id (drawn by `new_id`), within the caps on
    a fact's length and on the channel's memories (`existing_ids`)."""
    content = content.strip()
    if not content:
        raise ValidationError("Nothing to remember", "content")
    if len(content) > max_length:
        raise ValidationError(
            f"Memory too long: {len(content)} characters (limit {max_length})", "content"
        )
    if len(existing_ids) >= max_memories:
        raise ValidationError(
            f"Memory limit reached: this channel keeps at most {max_memories} memories;"
            " forget one first",
            "content",
        )
    return MemoryAdded(
        at=now,
        memory_id=new_memory_id(existing_ids, new_id),
        channel=channel,
        user_id=user,
        content=content,
        category=category,
        importance=importance,
    )


def decide_recall(
    *,
    channel: str,
    user: str | None,
    query: str,
    memories: Sequence[MemoryView],
    limit: int,
    now: datetime,
) -> tuple[list[MemoryView], MemoryRecalled | None]:
    """The matching memories, and the event recording the lookup (None when none match)."""
    found = rank_memories(query, memories, limit)
    if not found:
        return [], None
    event = MemoryRecalled(
        at=now,
        channel=channel,
        user=user,
        query=query,
        memory_ids=tuple(m["id"] for m in found),
    )
    return found, event


def decide_forget(
    *, channel: str, user: str | None, memory_id: str, exists: bool, now: datetime
) -> MemoryForgotten | None:
    """Forget a memory of the channel; None when the channel has no such memory."""
    if not exists:
        return None
    return MemoryForgotten(at=now, channel=channel, user=user, memory_id=memory_id)
