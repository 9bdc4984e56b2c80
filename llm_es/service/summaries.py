"""Summaries: `rosey.llm.summarize` of a text, and folding a channel's old messages.

A text summary is a completion turn (same limits and ledger) held to its word
count. A channel summary runs in the background after a chat turn once the
history passes `service.summarize_after_messages`; `plan_summary` and
`decide_summary` (pure) say what it folds and what it records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import cast

from llm_es.config import Config
from llm_es.domain.summarizer import (
    SummaryPlan,
    decide_summary,
    plan_summary,
    text_summary_prompt,
    within_words,
)
from llm_es.domain.views import ContextView, context_key
from llm_es.errors import IntegrityError, ProviderError
from llm_es.logs import log_kv
from llm_es.service.channel import Channels
from llm_es.service.fallback import ask_providers
from llm_es.service.ledger import spend_of
from llm_es.service.outcome import Outcome
from llm_es.service.recording import Recorder
from llm_es.service.turns import Turns, new_turn_id

logger = logging.getLogger(__name__)


class Summaries:
    """Text summaries for other plugins, and the channels' running summaries."""

    def __init__(
        self,
        config: Config,
        recorder: Recorder,
        turns: Turns,
        *,
        clock: Callable[[], datetime],
        turn_ids: Callable[[], str] = new_turn_id,
        channels: Channels,
    ) -> None:
        """`channels`: the channels' contexts with their text opened."""
        self._config = config
        self._channels = channels
        self._recorder = recorder
        self._views = recorder.views
        self._turns = turns
        self._clock = clock
        self._turn_ids = turn_ids
        self._summarizing: dict[str, asyncio.Task[bool]] = {}

    async def summarize_text(
        self,
        *,
        text: str,
        max_words: int,
        style: str,
        user: str | None,
        request_id: str | None = None,
    ) -> Outcome:
        """`rosey.llm.summarize`: a completion with a summary prompt, held to `max_words`."""
        outcome = await self._turns.complete(
            messages=text_summary_prompt(text, max_words, style),
            user=user,
            temperature=None,
            max_tokens=max(64, max_words * 2),
            provider_name=None,
            purpose="summarize",
            source="service",
            on_chunk=None,
            request_id=request_id,
        )
        if not outcome.success:
            return outcome
        summary = within_words(outcome.message, max_words, style)
        return Outcome.ok(summary, **{**outcome.data, "content": summary})

    def _plan(self, channel: str) -> SummaryPlan | None:
        """The summary the channel's history calls for now, if any."""
        service = self._config.service
        context = cast(ContextView | None, self._views.get(context_key(channel)))
        threshold = service.summarize_after_messages
        if context is None or threshold is None or len(context["messages"]) <= threshold:
            # Opening only leaves messages out, so a history this short calls for no
            # summary opened either; this runs after every turn, and opening a context
            # (up to 60 messages) was most of its cost.
            return None
        context = self._channels.opened_context(channel)
        return plan_summary(
            channel,
            context,
            keep_recent=service.max_context_messages,
            threshold=service.summarize_after_messages,
            max_words=service.summary_max_words,
        )

    def summarize_in_background(self, channel: str) -> None:
        """Start folding old messages into the summary, unless already under way here."""
        if channel in self._summarizing or self._plan(channel) is None:
            return
        task = asyncio.create_task(self.summarize_channel(channel), name=f"summarize:{channel}")
        self._summarizing[channel] = task
        task.add_done_callback(lambda _: self._summarizing.pop(channel, None))

    async def summarize_channel(self, channel: str) -> bool:
        """Summarize a channel's old messages through the provider; True when recorded.

        The summary is appended on the condition that no other summary of the
        channel was recorded since the one this read, so two instances never
        both fold the same messages. The provider call's tokens are recorded
        either way: they were spent.
        """
        await self._channels.fetch_keys(channel)
        plan = self._plan(channel)
        if plan is None:
            return False
        try:
            provider, result, _ = await ask_providers(
                self._turns.provider_chain(),
                plan.prompt,
                self._config.service.summary_max_words * 2,
            )
        except ProviderError as exc:
            # Summaries are not streamed: a call that failed left no answer that says
            # the provider took the prompt, so there is nothing to book.
            log_kv(logger, "summary_failed", level=logging.WARNING, channel=channel, error=str(exc))
            return False
        now = self._clock()
        await self._recorder.record(
            spend_of(
                result,
                at=now,
                turn_id=self._turn_ids(),
                channel=channel,
                user=None,
                purpose="context_summary",
                provider=provider.name,
                prompt_chars=sum(len(m["content"]) for m in plan.older),
            )
        )
        try:
            seq = await self._recorder.store.append(
                decide_summary(plan, result.content, now=now),
                expected_last_seq=plan.expected_summary_seq,
            )
        except IntegrityError:
            log_kv(logger, "summary_superseded", channel=channel)
            return False
        await self._recorder.wait_for(seq)
        log_kv(logger, "context_summarized", channel=channel, messages=len(plan.older))
        return True

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Let background summaries finish (bounded), then cancel what is left."""
        tasks = list(self._summarizing.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
