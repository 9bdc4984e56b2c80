"""Channel summaries: which old messages to fold into the summary, and the prompt that does it.

Pure: `plan_summary` says what to fold and how to ask; the service calls the
provider with the plan's prompt, and `decide_summary` turns the answer into
`ContextSummarized` (with the sequence it covers), which the service appends on
the plan's condition, plus its own `TokensSpent`; the context view then keeps
the summary instead of those messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from llm_es.domain.events import ContextSummarized
from llm_es.domain.messages import ChatMessage
from llm_es.domain.prompt import quoted, speaker_line
from llm_es.domain.views import ContextMessage, ContextView

SUMMARY_INSTRUCTIONS = (
    "You maintain the running summary of a group chat so the assistant can remember "
    "it later. Merge the previous summary and the new messages into one summary of at "
    "most {max_words} words. Keep who said what, names, facts, preferences, decisions "
    "and open questions; drop greetings and filler. Write plain prose, third person, "
    "no preamble."
)


def messages_to_summarize(
    view: ContextView | None, *, keep_recent: int, threshold: int | None
) -> list[ContextMessage]:
    """The messages older than the last `keep_recent`, once the history passes `threshold`."""
    if view is None or threshold is None:
        return []
    messages = view["messages"]
    if len(messages) <= threshold:
        return []
    older = messages[:-keep_recent] if keep_recent else list(messages)
    # Never split a question from its answer: both carry the same turn's seq.
    while older and len(older) < len(messages) and messages[len(older)]["seq"] == older[-1]["seq"]:
        older = older[:-1]
    return older


def summary_prompt(
    previous: str | None, messages: Sequence[ContextMessage], max_words: int
) -> list[ChatMessage]:
    """The provider prompt that folds `messages` into `previous`."""
    # Quoted, so a message cannot start a line of its own ("assistant: ...").
    transcript = "\n".join(
        speaker_line(m["user_id"] if m["role"] == "user" else "assistant", quoted(m["content"]))
        for m in messages
    )
    body = f"Previous summary:\n{quoted(previous)}\n\n" if previous else ""
    body += f"New messages:\n{transcript}"
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTIONS.format(max_words=max_words)},
        {"role": "user", "content": body},
    ]


@dataclass(frozen=True, slots=True)
class SummaryPlan:
    """What one summary of a channel folds, and what it asks the provider."""

    channel: str
    older: list[ContextMessage]
    """The messages to fold, oldest first."""
    prompt: list[ChatMessage]
    expected_summary_seq: int
    """The sequence of the summary this plan builds on: the append's condition, so two
    instances never both fold the same messages."""


def plan_summary(
    channel: str,
    view: ContextView | None,
    *,
    keep_recent: int,
    threshold: int | None,
    max_words: int,
) -> SummaryPlan | None:
    """The summary a channel's history calls for now; None when it calls for none."""
    older = messages_to_summarize(view, keep_recent=keep_recent, threshold=threshold)
    if view is None or not older:
        return None
    return SummaryPlan(
        channel=channel,
        older=older,
        prompt=summary_prompt(view["summary"], older, max_words),
        expected_summary_seq=view.get("summary_seq", 0),
    )


def decide_summary(plan: SummaryPlan, answer: str, *, now: datetime) -> ContextSummarized:
    """The provider's answer to a plan, as the event that replaces the folded messages."""
    return ContextSummarized(
        at=now,
        channel=plan.channel,
        summary=answer.strip(),
        through_seq=plan.older[-1]["seq"],
        message_count=len(plan.older),
    )


SUMMARY_STYLES = ("concise", "detailed", "bullets")

_STYLE_INSTRUCTIONS = {
    "concise": "Write one short paragraph with only the main point.",
    "detailed": "Write a thorough summary in prose that keeps the important details.",
    "bullets": "Write the summary as bullet points, one per line, each starting with '- '.",
}


def text_summary_prompt(text: str, max_words: int, style: str) -> list[ChatMessage]:
    """The prompt for `rosey.llm.summarize`: summarize `text` in a style, within a length."""
    return [
        {
            "role": "system",
            "content": (
                "You summarize text for other programs. "
                f"{_STYLE_INSTRUCTIONS[style]} Use at most {max_words} words. "
                "Answer with the summary only."
            ),
        },
        {"role": "user", "content": text},
    ]


def within_words(summary: str, max_words: int, style: str) -> str:
    """Hold a model's summary to `max_words`: whole bullets, else whole words."""
    text = summary.strip()
    if len(text.split()) <= max_words:
        return text
    if style == "bullets":
        kept: list[str] = []
        used = 0
        for line in text.splitlines():
            words = len(line.split())
            if used + words > max_words:
                break
            kept.append(line)
            used += words
        if kept:
            return "\n".join(kept)
    return " ".join(text.split()[:max_words])
