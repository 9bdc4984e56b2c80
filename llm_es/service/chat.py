"""`ChatService`: the one object the NATS surfaces and the composition root talk to.

A façade over the service's rooms, each with one job:

    turns.py       a turn: admit, ask the providers, record how it ended and its cost
    admission.py   the admit loop: decide, conditional append on the user's position
    user_locks.py  per-user locks of admission, kept only while held or awaited
    fallback.py    asking the providers in order; a turn's deadline
    ledger.py      the TokensSpent of answers and of failed calls that were billed
    channel.py     reset, persona, memories, and the chat prompt built from them
    summaries.py   text summaries, and folding a channel's old messages
    usage.py       a user's usage report, everyone's totals today
    recovery.py    closing turns whose instance stopped mid-turn
    recording.py   append, then wait until the views include it
    outcome.py     `Outcome`, what every command answers

Every state change is an event appended to the log; a method returns only
after the views include its events (read-your-writes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llm_es.config import Config
from llm_es.domain.events import utc_now
from llm_es.domain.memories import DEFAULT_IMPORTANCE
from llm_es.domain.messages import ChatMessage
from llm_es.metrics import PluginMetrics
from llm_es.providers.base import LLMProvider
from llm_es.service import usage
from llm_es.service.admission import Admission
from llm_es.service.channel import Channels, random_memory_id
from llm_es.service.fallback import ChunkSink, turn_deadline_seconds
from llm_es.service.outcome import Outcome
from llm_es.service.recording import RecordedViews, Recorder
from llm_es.service.recovery import IsAlive, Recovery
from llm_es.service.summaries import Summaries
from llm_es.service.turns import SERVICE_USER, Turns, new_turn_id
from llm_es.store.liveness import new_instance_id
from llm_es.store.log import EventStore
from llm_es.store.sealed_log import SealingEventStore

__all__ = ["SERVICE_USER", "ChatService", "ChunkSink", "Outcome"]


class ChatService:
    """Chat turns, context, personas, memories, summaries and usage on the log and the views."""

    def __init__(
        self,
        config: Config,
        store: EventStore,
        views: RecordedViews,
        providers: Mapping[str, LLMProvider],
        *,
        instance_id: str | None = None,
        turn_ids: Callable[[], str] = new_turn_id,
        memory_ids: Callable[[], str] = random_memory_id,
        metrics: PluginMetrics | None = None,
    ) -> None:
        """`metrics`: where the turn path's timings go (a registry of its own when None).
        A sealing store's keyring opens the personal text it sealed."""
        keyring = store.keyring if isinstance(store, SealingEventStore) else None
        self._config = config
        self._views = views
        self._clock = utc_now
        self.instance_id = instance_id or new_instance_id()
        self.metrics = metrics or PluginMetrics()
        recorder = Recorder(store, views, self.metrics)
        self.admission = Admission(
            recorder,
            config.rate_limits,
            retries=config.service.admit_retries,
            clock=self._clock,
        )
        self.channels = Channels(
            config, recorder, clock=self._clock, memory_ids=memory_ids, keyring=keyring
        )
        self.turns = Turns(
            config,
            recorder,
            providers,
            self.admission,
            self.channels,
            clock=self._clock,
            instance_id=self.instance_id,
            metrics=self.metrics,
            turn_ids=turn_ids,
        )
        self.metrics.count_admission_conflicts(lambda: self.admission.conflicts)
        self.summaries = Summaries(
            config,
            recorder,
            self.turns,
            clock=self._clock,
            turn_ids=turn_ids,
            channels=self.channels,
        )
        self.recovery = Recovery(
            recorder,
            clock=self._clock,
            instance_id=self.instance_id,
            started_at=self._clock(),
            in_flight=self.turns.in_flight,
            deadline_seconds=turn_deadline_seconds(config),
        )

    def admission_stats(self) -> dict[str, Any]:
        """This instance's admission counters (`$SRV.STATS` data of the `chat` endpoint)."""
        admission = self.admission
        return {
            "instance": self.instance_id,
            "admitted": admission.admitted,
            "rejected": admission.rejected,
            "refusals_unrecorded": admission.refusals_unrecorded,
            "admission_conflicts": admission.conflicts,
            "conflict_retries_per_admitted": (
                round(admission.conflicts / admission.admitted, 3) if admission.admitted else 0.0
            ),
            "turns_in_flight": len(self.turns.in_flight),
        }

    # ---------------------------------------------------------------- reads

    def persona_of(self, channel: str) -> str:
        return self.channels.persona_of(channel)

    def usage_report(self, user: str) -> dict[str, Any]:
        """A user's usage now and what each configured limit still allows."""
        return usage.usage_report(self._views, self._config.rate_limits, user, self._clock())

    def totals_today(self) -> tuple[int, int]:
        """Requests and tokens of every user today (from the usage views)."""
        return usage.totals_today(self._views, self._clock())

    def provider_chain(self, requested: str | None = None) -> list[LLMProvider]:
        """The provider to ask first (the request's, else the default), then the fallbacks."""
        return self.turns.provider_chain(requested)

    def turn_deadline_seconds(self) -> float:
        """The longest a turn may run here: every provider's timeout and retries, in order."""
        return turn_deadline_seconds(self._config)

    # ---------------------------------------------------------------- turns

    async def chat(
        self,
        *,
        channel: str,
        user: str,
        message: str,
        source: str = "command",
        persona: str | None = None,
        provider_name: str | None = None,
        on_chunk: ChunkSink | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        """One chat turn in a channel; then, if the history calls for it, a summary.

        With `on_chunk`, the answer is streamed: each piece is passed on as it
        arrives; the turn is recorded exactly as a non-streamed one.
        """
        outcome = await self.turns.chat(
            channel=channel,
            user=user,
            message=message,
            source=source,
            persona=persona,
            provider_name=provider_name,
            on_chunk=on_chunk,
            request_id=request_id,
        )
        if outcome.success:
            self.summaries.summarize_in_background(channel)
        return outcome

    async def complete(
        self,
        *,
        messages: Sequence[ChatMessage],
        user: str | None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        provider_name: str | None = None,
        purpose: str = "complete",
        source: str = "service",
        on_chunk: ChunkSink | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        """A raw completion for another plugin: no context, no memory, same limits and ledger.

        Without a user the spend is booked to `SERVICE_USER`, so no caller
        bypasses the limits or the ledger.
        """
        return await self.turns.complete(
            messages=messages,
            user=user,
            temperature=temperature,
            max_tokens=max_tokens,
            provider_name=provider_name,
            purpose=purpose,
            source=source,
            on_chunk=on_chunk,
            request_id=request_id,
        )

    # ---------------------------------------------------------------- channel commands

    async def reset(self, *, channel: str, user: str) -> Outcome:
        return await self.channels.reset(channel=channel, user=user)

    async def persona(self, *, channel: str, user: str | None, name: str) -> Outcome:
        """List the personas (empty `name`) or switch the channel's persona to `name`."""
        return await self.channels.persona(channel=channel, user=user, name=name)

    async def remember(
        self,
        *,
        channel: str,
        user: str | None,
        content: str,
        category: str = "fact",
        importance: int = DEFAULT_IMPORTANCE,
        request_id: str | None = None,
    ) -> Outcome:
        return await self.channels.remember(
            channel=channel,
            user=user,
            content=content,
            category=category,
            importance=importance,
            request_id=request_id,
        )

    async def recall(
        self, *, channel: str, user: str | None, query: str, limit: int = 5
    ) -> Outcome:
        return await self.channels.recall(channel=channel, user=user, query=query, limit=limit)

    async def forget(self, *, channel: str, user: str | None, memory_id: str) -> Outcome:
        return await self.channels.forget(channel=channel, user=user, memory_id=memory_id)

    # ---------------------------------------------------------------- summaries

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
        return await self.summaries.summarize_text(
            text=text, max_words=max_words, style=style, user=user, request_id=request_id
        )

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Let background summaries finish (bounded), then cancel what is left."""
        await self.summaries.aclose(grace_seconds)

    # ---------------------------------------------------------------- recovery

    async def close_abandoned_turns(self, is_alive: IsAlive) -> int:
        """Close turns nobody will end as failed (`abandoned`), so reservations never leak."""
        return await self.recovery.close_abandoned_turns(is_alive)
