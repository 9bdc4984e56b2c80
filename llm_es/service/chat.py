"""The application layer: one method per user-facing command, each a decide-append-wait cycle.

Every state change is an event appended to the log; a method returns only
after the views include its events (read-your-writes), so the next command in
the channel, on any instance, sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from llm_es.config import Config
from llm_es.domain import replies
from llm_es.domain.events import (
    ContextReset,
    ContextSummarized,
    Event,
    PersonaSwitched,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
    utc_now,
)
from llm_es.domain.limits import TurnRequest, decide_admission, estimate_tokens, usage_numbers
from llm_es.domain.memories import (
    DEFAULT_IMPORTANCE,
    decide_forget,
    decide_recall,
    decide_remember,
    normalize_memory_id,
    rank_memories,
    recall_query,
)
from llm_es.domain.prompt import build_chat_prompt, prompt_length
from llm_es.domain.summarizer import (
    messages_to_summarize,
    summary_prompt,
    text_summary_prompt,
    within_words,
)
from llm_es.domain.views import (
    ContextView,
    MemoryView,
    OpenTurn,
    SettingsView,
    UsageView,
    ViewReader,
    context_key,
    memories_group,
    memory_key,
    settings_key,
    usage_key,
)
from llm_es.errors import (
    IntegrityError,
    OperationalError,
    PartialUsage,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    ValidationError,
)
from llm_es.logs import log_kv
from llm_es.providers.base import ChatMessage, CompletionResult, LLMProvider
from llm_es.service.user_locks import UserLocks
from llm_es.store.liveness import new_instance_id
from llm_es.store.log import EventStore

logger = logging.getLogger("llm_es.service.chat")

VIEW_WAIT_SECONDS = 10.0
RETRY_WAIT_ALLOWANCE_SECONDS = 10.0
"""Room in a turn's deadline for each retry's backoff."""
ABANDON_GRACE_SECONDS = 30.0
"""Past its deadline, a turn whose instance still looks alive is closed after this much more."""

ADMIT_BACKOFF_SECONDS = 0.001

SERVICE_USER = "service"
"""Whom a service request without a user is booked to (rate limits and token ledger)."""

ChunkSink = Callable[[str], Awaitable[None]]
"""Receives each piece of a streamed answer as it arrives."""


@dataclass(slots=True)
class _StreamProgress:
    """How far a turn's provider calls got: what the turn owes however it ends."""

    provider: LLMProvider | None = None
    """The provider whose pieces were passed on (None before the first piece)."""
    chars: int = 0
    """Characters passed on so far."""
    charged: list[ProviderError] = field(default_factory=list)
    """Failures of providers passed over for a fallback after they had taken the prompt."""


@dataclass(frozen=True, slots=True)
class _Booking:
    """Whom a provider call's tokens are booked to."""

    turn_id: str
    channel: str | None
    user: str | None
    purpose: str
    model: str
    """The model to name when the failed call reported none."""

    @classmethod
    def of(cls, request: TurnRequest) -> _Booking:
        return cls(request.turn_id, request.channel, request.user, request.purpose, request.model)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's answer: the text for the channel, or an error, plus data for callers."""

    success: bool
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, message: str, **data: Any) -> Outcome:
        return cls(True, message, data)

    @classmethod
    def error(cls, message: str, **data: Any) -> Outcome:
        return cls(False, message, data)


class ChatService:
    """Chat turns, context, personas and memories on top of the log and the views."""

    def __init__(
        self,
        config: Config,
        store: EventStore,
        views: ViewReader,
        providers: Mapping[str, LLMProvider],
        *,
        clock: Callable[[], datetime] | None = None,
        instance_id: str | None = None,
        memory_ids: Callable[[], str] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._views = views
        self._providers = providers
        self._clock = clock or utc_now
        self._memory_ids = memory_ids or random_memory_id
        # Serializes admissions per user inside this process; the conditional
        # append keeps them exact across processes.
        self._user_locks = UserLocks()
        self._summarizing: dict[str, asyncio.Task[bool]] = {}
        self.instance_id = instance_id or new_instance_id()
        self._in_flight: set[str] = set()
        self._started_at = self._clock()
        self.admitted = 0
        """Turns this instance admitted (chat, complete and summarize)."""
        self.rejected = 0
        """Turns this instance refused by a limit."""
        self.admission_conflicts = 0
        """Conditional appends of admissions that lost a race (and were decided again)."""

    def admission_stats(self) -> dict[str, Any]:
        """This instance's admission counters (`$SRV.STATS` data of the `chat` endpoint)."""
        return {
            "instance": self.instance_id,
            "admitted": self.admitted,
            "rejected": self.rejected,
            "admission_conflicts": self.admission_conflicts,
            "conflict_retries_per_admitted": (
                round(self.admission_conflicts / self.admitted, 3) if self.admitted else 0.0
            ),
            "turns_in_flight": len(self._in_flight),
        }

    # ---------------------------------------------------------------- reads

    def persona_of(self, channel: str) -> str:
        settings = cast(SettingsView | None, self._views.get(settings_key(channel)))
        persona = settings["persona"] if settings else self._config.service.default_persona
        return persona if persona in self._config.personas else self._config.service.default_persona

    def memories_of(self, channel: str) -> list[MemoryView]:
        return cast(list[MemoryView], self._views.values_under(memories_group(channel)))

    def usage_of(self, user: str) -> UsageView | None:
        return cast(UsageView | None, self._views.get(usage_key(user)))

    # ---------------------------------------------------------------- chat

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
    ) -> Outcome:
        """One chat turn in a channel: context and memories in the prompt, then `_turn`.

        With `on_chunk`, the answer is streamed: each piece is passed on as it
        arrives; the turn is recorded exactly as a non-streamed one.
        """
        chain = self.provider_chain(provider_name)
        provider = chain[0]
        if persona is not None and persona not in self._config.personas:
            return Outcome.error(replies.unknown_persona(persona, self._config.personas))
        persona_name = persona or self.persona_of(channel)

        def build_prompt() -> list[ChatMessage]:
            context = cast(ContextView | None, self._views.get(context_key(channel)))
            return build_chat_prompt(
                persona_prompt=self._config.personas[persona or self.persona_of(channel)],
                summary=context["summary"] if context else None,
                memories=rank_memories(
                    message,
                    self.memories_of(channel),
                    self._config.service.max_memories_in_prompt,
                ),
                recent=context["messages"][-self._config.service.max_context_messages :]
                if context
                else [],
                user=user,
                message=message,
            )

        request = TurnRequest(
            turn_id=uuid.uuid4().hex,
            channel=channel,
            user=user,
            source=source,
            persona=persona_name,
            provider=provider.name,
            model=provider.default_model,
            message=message,
            instance=self.instance_id,
        )
        # The first prompt only sizes the token reservation; the one sent is built
        # once the views include the admission (see `_turn`).
        outcome = await self._turn(
            request,
            chain,
            build_prompt(),
            max_tokens=self._config.service.max_tokens,
            on_chunk=on_chunk,
            rebuild_prompt=build_prompt,
        )
        if outcome.success:
            self._summarize_in_background(channel)
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
    ) -> Outcome:
        """A raw completion for another plugin: no context, no memory, same limits and ledger.

        Without a user the spend is booked to `SERVICE_USER`, so no caller
        bypasses the limits or the ledger.
        """
        chain = self.provider_chain(provider_name)
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        request = TurnRequest(
            turn_id=uuid.uuid4().hex,
            channel=None,
            user=user or SERVICE_USER,
            source=source,
            persona="",
            provider=chain[0].name,
            model=chain[0].default_model,
            message=last_user,
            purpose=purpose,
            instance=self.instance_id,
        )
        return await self._turn(
            request,
            chain,
            list(messages),
            max_tokens=max_tokens or self._config.service.max_tokens,
            temperature=temperature,
            on_chunk=on_chunk,
        )

    async def _turn(
        self,
        request: TurnRequest,
        chain: Sequence[LLMProvider],
        prompt: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float | None = None,
        on_chunk: ChunkSink | None = None,
        rebuild_prompt: Callable[[], list[ChatMessage]] | None = None,
    ) -> Outcome:
        """Admit (or reject), ask the providers, record the answer or the failure.

        `rebuild_prompt` builds the prompt again once admitted: admission waits
        until the views include its own event, hence everything logged before
        it, so the rebuilt prompt sees the channel's latest turn whichever
        instance answered it (read-your-writes without an extra round trip).
        """
        channel, user = request.channel, request.user
        # In flight before it is admitted: the sweeper must never see it open and unowned.
        self._in_flight.add(request.turn_id)
        try:
            decision = await self._admit(
                request, estimate_tokens(prompt_length(prompt)), max_tokens
            )
            if not isinstance(decision, TurnAdmitted):
                log_kv(logger, "turn_rejected", channel=channel, user=user, window=decision.window)
                return Outcome.error(
                    decision.detail, turn_id=request.turn_id, reason=decision.reason
                )
            if rebuild_prompt is not None:
                prompt = rebuild_prompt()
            return await self._finish_turn(
                request, decision, chain, prompt, temperature=temperature, on_chunk=on_chunk
            )
        finally:
            self._in_flight.discard(request.turn_id)

    async def _finish_turn(
        self,
        request: TurnRequest,
        decision: TurnAdmitted,
        chain: Sequence[LLMProvider],
        prompt: list[ChatMessage],
        *,
        temperature: float | None,
        on_chunk: ChunkSink | None,
    ) -> Outcome:
        """Ask the providers for an admitted turn and record how it ended."""
        channel, user = request.channel, request.user
        started = time.perf_counter()
        progress = _StreamProgress()
        try:
            # Past the deadline other instances may close this turn as abandoned,
            # so it must not end any later than that here.
            async with asyncio.timeout(self.turn_deadline_seconds()):
                provider, result, passed_over = await self._ask(
                    chain,
                    prompt,
                    decision.max_tokens,
                    temperature=temperature,
                    on_chunk=on_chunk,
                    progress=progress,
                )
        except TimeoutError:
            streaming = progress.provider
            provider_name = (streaming or chain[0]).name
            exc: ProviderError = ProviderTimeout(
                provider_name, f"{provider_name} did not answer within the turn's deadline"
            )
            if streaming is not None:
                # Pieces had arrived: the provider had taken the prompt, and bills for it.
                exc.prompt_consumed = True
                exc.usage = PartialUsage(
                    model=streaming.default_model, completion_chars=progress.chars
                )
            return await self._fail_turn(request, exc, prompt, progress.charged)
        except ProviderError as exc:
            return await self._fail_turn(request, exc, prompt, progress.charged)
        latency_ms = round((time.perf_counter() - started) * 1000, 3)

        now = self._clock()
        spent = spend_of(
            result,
            at=now,
            turn_id=request.turn_id,
            channel=channel,
            user=user,
            purpose=request.purpose,
            provider=provider.name,
            prompt_chars=prompt_length(prompt),
        )
        owed = self._owed(_Booking.of(request), progress.charged, prompt, now)
        await self._record(
            *owed,
            spent,
            TurnCompleted(
                at=now,
                turn_id=request.turn_id,
                channel=channel,
                user=user,
                content=result.content,
                provider=provider.name,
                model=result.model,
                latency_ms=latency_ms,
                finish_reason=result.finish_reason,
                fallback_from=passed_over,
            ),
        )
        tokens_used = sum(e.prompt_tokens + e.completion_tokens for e in (*owed, spent))
        log_kv(
            logger,
            "turn_completed",
            channel=channel,
            user=user,
            purpose=request.purpose,
            provider=provider.name,
            model=result.model,
            tokens=tokens_used,
            latency_ms=latency_ms,
        )
        return Outcome.ok(
            result.content,
            content=result.content,
            turn_id=request.turn_id,
            tokens_used=tokens_used,
            provider=provider.name,
            model=result.model,
        )

    async def _fail_turn(
        self,
        request: TurnRequest,
        exc: ProviderError,
        prompt: Sequence[ChatMessage],
        charged: Sequence[ProviderError] = (),
    ) -> Outcome:
        """Record the failure; first what every provider that had taken the prompt is owed.

        The spends and the failure go in one append, so the views never see the
        turn closed with its tokens missing, nor the tokens without the close.
        """
        error_type = failure_type(exc)
        now = self._clock()
        failed = TurnFailed(
            at=now,
            turn_id=request.turn_id,
            channel=request.channel,
            user=request.user,
            error_type=error_type,
            error=str(exc),
        )
        owed = self._owed(_Booking.of(request), [*charged, exc], prompt, now)
        await self._record(*owed, failed)
        tokens = sum(e.prompt_tokens + e.completion_tokens for e in owed)
        log_kv(
            logger,
            "turn_failed",
            channel=request.channel,
            user=request.user,
            error_type=error_type,
            tokens=tokens,
        )
        return Outcome.error(str(exc), turn_id=request.turn_id, provider=exc.provider)

    def _owed(
        self,
        booking: _Booking,
        failures: Sequence[ProviderError],
        prompt: Sequence[ChatMessage],
        now: datetime,
    ) -> list[TokensSpent]:
        """A `TokensSpent` for each failed call whose provider had taken the prompt.

        The figures it reported before failing, else an estimate flagged `estimated`.
        """
        owed: list[TokensSpent] = []
        for failure in failures:
            if not failure.prompt_consumed:
                continue
            usage = failure.usage
            if usage is None:
                asked = self._providers.get(failure.provider)
                usage = PartialUsage(model=asked.default_model if asked else booking.model)
            owed.append(
                spend_of(
                    usage,
                    at=now,
                    turn_id=booking.turn_id,
                    channel=booking.channel,
                    user=booking.user,
                    purpose=booking.purpose,
                    provider=failure.provider,
                    prompt_chars=prompt_length(prompt),
                )
            )
        return owed

    def provider_chain(self, requested: str | None = None) -> list[LLMProvider]:
        """The provider to ask first (the request's, else the default), then the fallbacks."""
        first = requested or self._config.default_provider
        if first not in self._providers:
            raise ValidationError(f"Provider '{first}' is not configured", "provider")
        names = [first, *(n for n in self._config.fallback_providers if n != first)]
        return [self._providers[n] for n in names if n in self._providers]

    async def _ask(
        self,
        chain: Sequence[LLMProvider],
        prompt: list[ChatMessage],
        max_tokens: int,
        *,
        temperature: float | None = None,
        on_chunk: ChunkSink | None = None,
        progress: _StreamProgress | None = None,
    ) -> tuple[LLMProvider, CompletionResult, tuple[str, ...]]:
        """Ask each provider in turn until one answers; only outages move down the chain.

        A stream that already passed pieces on is never retried elsewhere: the
        caller has seen part of an answer. `progress` follows the pieces passed on.
        """
        passed_over: list[str] = []
        for provider in chain:
            streamed = False
            try:
                if on_chunk is None:
                    result = await provider.chat(
                        prompt, max_tokens=max_tokens, temperature=temperature
                    )
                else:
                    final: CompletionResult | None = None
                    async with contextlib.aclosing(
                        provider.stream(prompt, max_tokens=max_tokens, temperature=temperature)
                    ) as pieces:
                        async for piece in pieces:
                            if isinstance(piece, CompletionResult):
                                final = piece
                            else:
                                streamed = True
                                if progress is not None:
                                    progress.provider = provider
                                    progress.chars += len(piece)
                                await on_chunk(piece)
                    if final is None:
                        raise ProviderBadResponse(
                            provider.name, f"{provider.name}: stream ended early"
                        )
                    result = final
            except ProviderError as exc:
                if streamed or provider is chain[-1] or not is_outage(exc):
                    raise
                if exc.prompt_consumed and progress is not None:
                    progress.charged.append(exc)
                log_kv(
                    logger,
                    "provider_fallback",
                    level=logging.WARNING,
                    provider=provider.name,
                    error_type=failure_type(exc),
                )
                passed_over.append(provider.name)
                continue
            return provider, result, tuple(passed_over)
        raise AssertionError("an empty provider chain")  # provider_chain never returns one

    async def _admit(
        self, request: TurnRequest, prompt_estimate: int, max_tokens: int
    ) -> TurnAdmitted | TurnRejected:
        """Decide and append admission with the per-user conditional append; retry on races."""
        async with self._user_locks.hold(request.user):
            boundary = self._store.user_boundary(request.user)
            known_last: int | None = None
            for attempt in range(self._config.service.admit_retries):
                usage = self.usage_of(request.user)
                position = usage["seq"] if usage else 0
                if known_last is not None:
                    # Events the views skip (unreadable ones) still move the
                    # subject's last sequence; the views include all up to it.
                    position = max(position, known_last)
                decision: TurnAdmitted | TurnRejected = decide_admission(
                    request,
                    usage,
                    self._config.rate_limits,
                    now=self._clock(),
                    prompt_tokens_estimate=prompt_estimate,
                    max_tokens=max_tokens,
                )
                if isinstance(decision, TurnRejected):
                    # A refusal consumes no budget, so it has no race to lose:
                    # appending it unconditionally keeps floods from contending.
                    await self._wait_for(await self._store.append(decision))
                    self.rejected += 1
                    return decision
                try:
                    seq = await self._store.append(
                        decision, expected_last_seq=position, boundary=boundary
                    )
                except IntegrityError as conflict:
                    # Another writer got there first: fold what it wrote, decide again.
                    self.admission_conflicts += 1
                    known_last = conflict.actual_last_seq or await self._store.last_seq(boundary)
                    await self._wait_for(known_last)
                    # Jitter spreads instances that keep colliding on one user.
                    await asyncio.sleep(random.uniform(0, ADMIT_BACKOFF_SECONDS) * min(attempt, 8))
                    continue
                self.admitted += 1
                await self._wait_for(seq)
                return decision
            raise OperationalError("too many concurrent requests for this user; try again")

    async def _wait_for(self, seq: int) -> None:
        async with asyncio.timeout(VIEW_WAIT_SECONDS):
            await self._views.wait_for(seq)

    async def _catch_up(self) -> None:
        """Wait until the views include everything already in the log.

        Another instance may have answered the previous command of this channel:
        its events are in the log (it replied after they were acknowledged), so
        folding up to the log's end now makes this instance see them too.
        """
        async with asyncio.timeout(VIEW_WAIT_SECONDS):
            await self._views.catch_up()

    async def _record(self, *events: Event) -> None:
        """Append events (in order) and wait until the views include them."""
        if len(events) == 1:
            seq = await self._store.append(events[0])
        else:
            seq = max(await self._store.append_all(events))
        await self._wait_for(seq)

    # ---------------------------------------------------------------- context and persona

    async def reset(self, *, channel: str, user: str) -> Outcome:
        await self._record(ContextReset(at=self._clock(), channel=channel, user=user))
        return Outcome.ok(replies.CONTEXT_RESET)

    async def persona(self, *, channel: str, user: str | None, name: str) -> Outcome:
        """List the personas (empty `name`) or switch the channel's persona to `name`."""
        await self._catch_up()
        names = list(self._config.personas)
        current = self.persona_of(channel)
        if not name:
            return Outcome.ok(replies.persona_list(names, current), persona=current)
        wanted = name.strip().lower()
        if wanted not in self._config.personas:
            return Outcome.error(replies.unknown_persona(name.strip(), names))
        await self._record(
            PersonaSwitched(at=self._clock(), channel=channel, user=user, persona=wanted)
        )
        return Outcome.ok(replies.persona_changed(wanted), persona=wanted)

    # ---------------------------------------------------------------- memories

    async def remember(
        self,
        *,
        channel: str,
        user: str | None,
        content: str,
        category: str = "fact",
        importance: int = DEFAULT_IMPORTANCE,
    ) -> Outcome:
        await self._catch_up()
        event = decide_remember(
            channel=channel,
            user=user,
            content=content,
            category=category,
            importance=importance,
            existing_ids=(m["id"] for m in self.memories_of(channel)),
            new_id=self._memory_ids,
            now=self._clock(),
        )
        await self._record(event)
        return Outcome.ok(
            replies.remembered(event.content, event.memory_id), memory_id=event.memory_id
        )

    async def recall(
        self, *, channel: str, user: str | None, query: str, limit: int = 5
    ) -> Outcome:
        query = recall_query(query)
        await self._catch_up()
        found, event = decide_recall(
            channel=channel,
            user=user,
            query=query,
            memories=self.memories_of(channel),
            limit=limit,
            now=self._clock(),
        )
        if event is None:
            return Outcome.ok(replies.nothing_recalled(query), memories=[], count=0)
        await self._record(event)
        listed = [_public_memory(m) for m in found]
        return Outcome.ok(replies.recalled(query, found), memories=listed, count=len(listed))

    async def forget(self, *, channel: str, user: str | None, memory_id: str) -> Outcome:
        normalized = normalize_memory_id(memory_id)
        await self._catch_up()
        event = decide_forget(
            channel=channel,
            user=user,
            memory_id=normalized,
            exists=self._views.get(memory_key(channel, normalized)) is not None,
            now=self._clock(),
        )
        if event is None:
            return Outcome.error(replies.memory_not_found(normalized))
        await self._record(event)
        return Outcome.ok(replies.forgot(normalized), memory_id=normalized)

    async def summarize_text(
        self, *, text: str, max_words: int, style: str, user: str | None
    ) -> Outcome:
        """`rosey.llm.summarize`: a completion with a summary prompt, held to `max_words`."""
        outcome = await self.complete(
            messages=text_summary_prompt(text, max_words, style),
            user=user,
            max_tokens=max(64, max_words * 2),
            purpose="summarize",
        )
        if not outcome.success:
            return outcome
        summary = within_words(outcome.message, max_words, style)
        return Outcome.ok(summary, **{**outcome.data, "content": summary})

    def usage_report(self, user: str) -> dict[str, Any]:
        """A user's usage now and what each configured limit still allows.

        A limit that is switched off has no entry: the seed's `UsageResponse`
        declares the figures as integers.
        """
        numbers = usage_numbers(self.usage_of(user), self._clock())
        limits = self._config.rate_limits
        remaining = {
            name: max(0, limit - used)
            for name, limit, used in (
                ("requests_minute", limits.requests_per_minute, numbers.requests_minute),
                ("requests_hour", limits.requests_per_hour, numbers.requests_hour),
                ("requests_day", limits.requests_per_day, numbers.requests_today),
                (
                    "tokens_day",
                    limits.tokens_per_day,
                    numbers.tokens_today + numbers.reserved_tokens,
                ),
            )
            if limit is not None
        }
        return {
            "user": user,
            "requests_today": numbers.requests_today,
            "tokens_today": numbers.tokens_today,
            "rate_limits_remaining": remaining,
        }

    def totals_today(self) -> tuple[int, int]:
        """Requests and tokens of every user today (from the usage views)."""
        now = self._clock()
        requests = tokens = 0
        for key in self._views.keys_under("usage."):
            numbers = usage_numbers(cast(UsageView | None, self._views.get(key)), now)
            requests += numbers.requests_today
            tokens += numbers.tokens_today
        return requests, tokens

    # ---------------------------------------------------------------- summaries

    def _summarize_in_background(self, channel: str) -> None:
        """Start folding old messages into the summary, unless already under way here."""
        if channel in self._summarizing or not messages_to_summarize(
            cast(ContextView | None, self._views.get(context_key(channel))),
            keep_recent=self._config.service.max_context_messages,
            threshold=self._config.service.summarize_after_messages,
        ):
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
        service = self._config.service
        view = cast(ContextView | None, self._views.get(context_key(channel)))
        older = messages_to_summarize(
            view,
            keep_recent=service.max_context_messages,
            threshold=service.summarize_after_messages,
        )
        if view is None or not older:
            return False
        try:
            provider, result, _ = await self._ask(
                self.provider_chain(),
                summary_prompt(view["summary"], older, service.summary_max_words),
                service.summary_max_words * 2,
            )
        except ProviderError as exc:
            # Summaries are not streamed: a call that failed left no answer that says
            # the provider took the prompt, so there is nothing to book.
            log_kv(logger, "summary_failed", level=logging.WARNING, channel=channel, error=str(exc))
            return False
        now = self._clock()
        await self._record(
            spend_of(
                result,
                at=now,
                turn_id=uuid.uuid4().hex,
                channel=channel,
                user=None,
                purpose="context_summary",
                provider=provider.name,
                prompt_chars=sum(len(m["content"]) for m in older),
            )
        )
        summarized = ContextSummarized(
            at=now,
            channel=channel,
            summary=result.content.strip(),
            through_seq=older[-1]["seq"],
            message_count=len(older),
        )
        try:
            seq = await self._store.append(
                summarized,
                expected_last_seq=view.get("summary_seq", 0),
            )
        except IntegrityError:
            log_kv(logger, "summary_superseded", channel=channel)
            return False
        await self._wait_for(seq)
        log_kv(logger, "context_summarized", channel=channel, messages=len(older))
        return True

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Let background summaries finish (bounded), then cancel what is left."""
        tasks = list(self._summarizing.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # ---------------------------------------------------------------- recovery

    async def close_abandoned_turns(self, is_alive: Callable[[str], Awaitable[bool]]) -> int:
        """Close turns nobody will end as failed (`abandoned`), so reservations never leak.

        A turn is abandoned when it is not running here and its instance is this
        one from an earlier run (same `instance_id`), is no longer alive, or has
        run past the longest a provider call can take. Each close is appended on
        the user's position, so two instances never close the same turn twice.
        """
        await self._catch_up()
        now = self._clock()
        closed = 0
        for key in self._views.keys_under("usage."):
            usage = cast(UsageView | None, self._views.get(key))
            if usage is None:
                continue
            position = usage["seq"]
            for turn_id, turn in list(usage["open_turns"].items()):
                if turn_id in self._in_flight:
                    continue
                if not await self._is_abandoned(turn, now, is_alive):
                    continue
                failed = TurnFailed(
                    at=now,
                    turn_id=turn_id,
                    channel=turn["channel"],
                    user=usage["user"],
                    error_type="abandoned",
                    error="turn was admitted but never ended (its instance stopped mid-turn)",
                )
                try:
                    position = await self._store.append(
                        failed,
                        expected_last_seq=position,
                        boundary=self._store.user_boundary(usage["user"]),
                    )
                except IntegrityError:
                    break  # the user moved on meanwhile: look again at the next sweep
                await self._wait_for(position)
                closed += 1
        if closed:
            log_kv(logger, "abandoned_turns_closed", count=closed)
        return closed

    async def _is_abandoned(
        self, turn: OpenTurn, now: datetime, is_alive: Callable[[str], Awaitable[bool]]
    ) -> bool:
        admitted_at = datetime.fromisoformat(turn["admitted_at"])
        if (
            now - admitted_at
        ).total_seconds() > self.turn_deadline_seconds() + ABANDON_GRACE_SECONDS:
            return True
        recorded = await self._store.event_at(turn["admitted_seq"])
        owner = (
            recorded.event.instance if recorded and isinstance(recorded.event, TurnAdmitted) else ""
        )
        if not owner:
            return False  # written before instances were recorded: wait for the deadline
        if owner == self.instance_id:
            # Ours from before this process started: nothing here runs it any more.
            return admitted_at < self._started_at
        return not await is_alive(owner)

    def turn_deadline_seconds(self) -> float:
        """The longest a turn may run here: every provider's timeout and retries, in order."""
        total = 0.0
        for provider_name in {self._config.default_provider, *self._config.fallback_providers}:
            settings = self._config.providers.get(provider_name)
            retries = settings.max_retries
            total += settings.timeout * (retries + 1) + RETRY_WAIT_ALLOWANCE_SECONDS * retries
        return total


def is_outage(error: ProviderError) -> bool:
    """Errors a fallback provider can help with: the provider is down, slow or overloaded."""
    if isinstance(error, ProviderUnavailable | ProviderTimeout | ProviderRateLimited):
        return True
    return isinstance(error, ProviderBadResponse) and (error.status or 0) >= 500


def failure_type(error: ProviderError) -> str:
    """`TurnFailed.error_type` for a provider error (audits group by it)."""
    if isinstance(error, ProviderTimeout):
        return "timeout"
    if isinstance(error, ProviderUnavailable):
        return "unavailable"
    if isinstance(error, ProviderAuthError):
        return "auth"
    if isinstance(error, ProviderRateLimited):
        return "rate_limited"
    if isinstance(error, ProviderBadRequest):
        return "bad_request"
    return "provider_error"


def spend_of(
    result: CompletionResult | PartialUsage,
    *,
    at: datetime,
    turn_id: str,
    channel: str | None,
    user: str | None,
    purpose: str,
    provider: str,
    prompt_chars: int,
) -> TokensSpent:
    """The provider call's real usage, estimated (and flagged) only where it reported none.

    `result` is an answer, or what a call that failed after the provider took
    the prompt had used (its completion estimated from the text received).
    """
    completion_chars = (
        len(result.content) if isinstance(result, CompletionResult) else result.completion_chars
    )
    return TokensSpent(
        at=at,
        turn_id=turn_id,
        channel=channel,
        user=user,
        purpose=purpose,
        provider=provider,
        model=result.model,
        prompt_tokens=(
            result.prompt_tokens
            if result.prompt_tokens is not None
            else estimate_tokens(prompt_chars)
        ),
        completion_tokens=(
            result.completion_tokens
            if result.completion_tokens is not None
            else estimate_tokens(completion_chars)
        ),
        estimated=result.prompt_tokens is None or result.completion_tokens is None,
        cost=result.cost,
    )


def random_memory_id() -> str:
    """A candidate memory id: 8 random hex digits."""
    return secrets.token_hex(4)


def _public_memory(memory: MemoryView) -> dict[str, Any]:
    """A memory as callers see it (no internal sequence numbers)."""
    return {k: v for k, v in memory.items() if k != "seq"}
