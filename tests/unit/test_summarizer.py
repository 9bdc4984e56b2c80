"""Which messages get summarized, and the prompt that summarizes them."""

from __future__ import annotations

from llm_es.domain.summarizer import messages_to_summarize, summary_prompt
from llm_es.domain.views import ContextMessage, ContextView


def message(n: int, role: str, seq: int) -> ContextMessage:
    return {
        "role": role,
        "content": f"m{n}",
        "user_id": "alice" if role == "user" else None,
        "timestamp": "2026-11-26T00:00:00Z",
        "turn_id": f"t{seq}",
        "seq": seq,
    }


def view_of(count: int) -> ContextView:
    messages = [
        message(n, "user" if n % 2 == 0 else "assistant", 10 + n // 2) for n in range(count)
    ]
    return {
        "channel": "c",
        "seq": 99,
        "summary": None,
        "summary_seq": 0,
        "messages": messages,
        "pending": {},
    }


def test_nothing_until_the_history_passes_the_threshold() -> None:
    """At or under the threshold, or with summaries off, nothing is summarized."""
    assert messages_to_summarize(view_of(4), keep_recent=2, threshold=4) == []
    assert messages_to_summarize(view_of(8), keep_recent=2, threshold=None) == []
    assert messages_to_summarize(None, keep_recent=2, threshold=4) == []


def test_everything_but_the_prompt_window_is_summarized() -> None:
    """Past the threshold, all but the last `keep_recent` messages are folded in."""
    older = messages_to_summarize(view_of(6), keep_recent=2, threshold=4)
    assert [m["content"] for m in older] == ["m0", "m1", "m2", "m3"]


def test_a_question_is_never_split_from_its_answer() -> None:
    """An odd window would cut a turn in two; the whole turn stays verbatim instead."""
    older = messages_to_summarize(view_of(6), keep_recent=3, threshold=4)
    assert [m["content"] for m in older] == ["m0", "m1"]


def test_prompt_carries_previous_summary_and_speakers() -> None:
    """The summary prompt merges the previous summary with a speaker-labelled transcript."""
    prompt = summary_prompt("Earlier: hello.", view_of(2)["messages"], 100)
    assert "at most 100 words" in prompt[0]["content"]
    assert (
        prompt[1]["content"]
        == "Previous summary:\nEarlier: hello.\n\nNew messages:\nalice: m0\nassistant: m1"
    )
