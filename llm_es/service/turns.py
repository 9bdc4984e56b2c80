"""A turn: admit it, ask the providers (with fallback), record how it ended and what it cost.

A turn ends in exactly one of `TurnCompleted`, `TurnFailed` or `TurnRejected`;
its `TokensSpent` go in the same append as its end, so the views never see the
turn closed with its tokens missing, nor the tokens without the close. Its events
have ids derived from the turn id, so a turn's end is stored once however often
it is appended; a request with a `request_id` names its turn, and a retry of it
is answered from the log (`retries.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from llm_es.config import Config
from llm_es.domain import replies
from llm_es.domain.events import TurnAdmitted, TurnCompleted
from llm_es.domain.idempotency import request_turn_id, with_turn_ids
from llm_es.domain.limits import TurnRequest, estimate_tokens
from llm_es.domain.messages import ChatMessage
from llm_es.domain.prompt import prompt_length
from llm_es.errors import (
    AppendRefused,
    EventsQuarantined,
    OutcomeUnknown,
    PartialUsage,
    ProviderError,
    ProviderTimeout,
)
from llm_es.logs import log_kv
from llm_es.metrics import PluginMetrics
from llm_es.providers.base import LLMProvider
from llm_es.service.admission import Admission, AlreadyDecided
from llm_es.service.channel import Channels
from llm_es.service.fallback import (
    ChunkSink,
    StreamProgress,
    ask_providers,
    provider_chain,
    turn_deadline_seconds,
)
from llm_es.service.ledger import Booking, owed_spends, spend_of, tokens_of
from llm_es.service.outcome import Outcome
from llm_es.service.recording import Recorder
from llm_es.service.retries import (
    RETRY_WAIT_GRACE_SECONDS,
    closed_meanwhile,
    outcome_unknown,
    retried_turn_outcome,
)
from llm_es.service.turn_end import record_failure, record_unstored, refused_busy
from llm_es.service.turn_slots import TurnSlots
from llm_es.service.turn_timing import observe_turn, timing_first_chunk

logger = logging.getLogger(__name__)

SERVICE_USER = "service"
"""Whom a service request without a user is booked to (rate limits and token ledger)."""


END_CONFIRM_MIN_SECONDS = 5.0
"""Least time the log is given to confirm a turn's end (else what is left of its deadline)."""


def new_turn_id() -> str:
    """A fresh turn id (uuid4 hex)."""
    return uuid.uuid4().hex


class Turns:
    """Chat turns in channels and raw completions, on the same limits and ledger."""

    def __init__(
        self,
        config: Config,
        recorder: Recorder,
        providers: Mapping[str, LLMProvider],
        admission: Admission,
        channels: Channels,
        *,
        clock: Callable[[], datetime],
        instance_id: str,
        metrics: PluginMetrics,
        turn_ids: Callable[[], str] = new_turn_id,
    ) -> None:
        self._config = config
        self._recorder = recorder
        self._providers = providers
        self._admission = admission
        self._channels = channels
        self._clock = clock
        self._instance_id = instance_id
        self._turn_ids = turn_ids
        self._metrics = metrics
        self.slots = TurnSlots(config.service.max_concurrent_turns_per_channel)
        self.in_flight: Counter[str] = Counter()
        """Turns running here, from before their admission to their end; counted (a retry runs
        beside its first attempt: its end must not take the first out)."""

    def provider_chain(self, requested: str | None = None) -> list[LLMProvider]:
        return provider_chain(self._config, self._providers, requested)

    async def chat(
        self,
        *,
        channel: str,
        user: str,
        message: str,
        source: str,
        persona: str | None,
        provider_name: str | None,
        on_chunk: ChunkSink | None,
        request_id: str | None = None,
    ) -> Outcome:
        """One chat turn in a channel: context and memories in the prompt."""
        chain = self.provider_chain(provider_name)
        if persona is not None and persona not in self._config.personas:
            return Outcome.error(replies.unknown_persona(persona, self._config.personas))
        await self._channels.fetch_keys(channel)  # the prompt opens the channel's text

        def build_prompt() -> list[ChatMessage]:
            return self._channels.chat_prompt(
                channel=channel, user=user, message=message, persona=persona
            )

        request = TurnRequest(
            turn_id=self._turn_id("chat", user, request_id),
            channel=channel,
            user=user,
            source=source,
            persona=persona or self._channels.persona_of(channel),
            provider=chain[0].name,
            model=chain[0].default_model,
            message=message,
            instance=self._instance_id,
        )
        # The first prompt only sizes the token reservation; the one sent is built
        # once the views include the admission (see `run`).
        return await self.run(
            request,
            chain,
            build_prompt(),
            max_tokens=self._config.service.max_tokens,
            on_chunk=on_chunk,
            rebuild_prompt=build_prompt,
            retried=request_id is not None,
        )

    async def complete(
        self,
        *,
        messages: Sequence[ChatMessage],
        user: str | None,
        temperature: float | None,
        max_tokens: int | None,
        provider_name: str | None,
        purpose: str,
        source: str,
        on_chunk: ChunkSink | None,
        request_id: str | None = None,
    ) -> Outcome:
        """A raw completion: no context, no memory; without a user, booked to SERVICE_USER."""
        chain = self.provider_chain(provider_name)
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        booked_to = user or SERVICE_USER
        request = TurnRequest(
            turn_id=self._turn_id(purpose, booked_to, request_id),
            channel=None,
            user=booked_to,
            source=source,
            persona="",
            provider=chain[0].name,
            model=chain[0].default_model,
            message=last_user,
            purpose=purpose,
            instance=self._instance_id,
        )
        return await self.run(
            request,
            chain,
            list(messages),
            max_tokens=max_tokens or self._config.service.max_tokens,
            temperature=temperature,
            on_chunk=on_chunk,
            retried=request_id is not None,
        )

    def _turn_id(self, purpose: str, user: str, request_id: str | None) -> str:
        """The turn id a caller's `request_id` names, else a fresh one."""
        if request_id is None:
            return self._turn_ids()
        return request_turn_id(purpose, user, request_id)

    async def run(
        self,
        request: TurnRequest,
        chain: Sequence[LLMProvider],
        prompt: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float | None = None,
        on_chunk: ChunkSink | None = None,
        rebuild_prompt: Callable[[], list[ChatMessage]] | None = None,
        retried: bool = False,
    ) -> Outcome:
        """Admit (or reject), ask the providers, record the answer or the failure.

        With `retried` (the turn id comes from a `request_id`), a turn decided
        before is not run again: the first attempt's outcome is read from the log.

        `rebuild_prompt` builds the prompt again once admitted: admission waits
        until the views include its own event, hence everything logged before
        it, so the rebuilt prompt sees the channel's latest turn whichever
        instance answered it (read-your-writes without an extra round trip).
        """
        started = time.perf_counter()
        # In flight before it is admitted: the sweeper must never see it open and not running.
        self.in_flight[request.turn_id] += 1
        try:
            with self.slots.take(request.channel or request.user) as free:
                if not free:
                    return refused_busy(request, self.slots.limit or 0)
                decision = await self._admission.admit_turn(
                    request, estimate_tokens(prompt_length(prompt)), max_tokens, retried=retried
                )
                if isinstance(decision, AlreadyDecided):
                    return await retried_turn_outcome(
                        self._recorder,
                        turn_id=request.turn_id,
                        user=request.user,
                        decided_at=decision.seq,
                        wait_seconds=turn_deadline_seconds(self._config) + RETRY_WAIT_GRACE_SECONDS,
                    )
                if not isinstance(decision, TurnAdmitted):
                    log_kv(
                        logger,
                        "turn_rejected",
                        channel=request.channel,
                        user=request.user,
                        window=decision.window,
                    )
                    return Outcome.error(
                        decision.detail, turn_id=request.turn_id, reason=decision.reason
                    )
                if rebuild_prompt is not None:
                    prompt = rebuild_prompt()
                return await self._answer(
                    request,
                    decision,
                    chain,
                    prompt,
                    started=started,
                    temperature=temperature,
                    on_chunk=timing_first_chunk(self._metrics, on_chunk, started),
                    with_request_id=retried,
                )
        finally:
            self.in_flight.subtract((request.turn_id,))  # O(1); `-=` walks every turn
            if self.in_flight[request.turn_id] <= 0:  # gone at zero: not running here
                del self.in_flight[request.turn_id]

    async def _answer(
        self,
        request: TurnRequest,
        decision: TurnAdmitted,
        chain: Sequence[LLMProvider],
        prompt: list[ChatMessage],
        *,
        started: float,
        temperature: float | None,
        on_chunk: ChunkSink | None,
        with_request_id: bool,
    ) -> Outcome:
        """Ask the providers for an admitted turn and record how it ended. An end the log
        cannot confirm (nats-server away) is appended again until it can, up to the turn's
        deadline; past that the answer says the outcome is not known, never a failure."""
        asked = time.perf_counter()
        deadline = turn_deadline_seconds(self._config)

        def confirm_within() -> float:
            return max(END_CONFIRM_MIN_SECONDS, deadline - (time.perf_counter() - asked))

        progress = StreamProgress()
        failure: ProviderError | None = None
        try:
            # Past the deadline other instances may close this turn as abandoned,
            # so it must not end any later than that here.
            async with asyncio.timeout(deadline):
                provider, result, passed_over = await ask_providers(
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
            failure = ProviderTimeout(
                provider_name, f"{provider_name} did not answer within the turn's deadline"
            )
            if streaming is not None:
                # Pieces had arrived: the provider had taken the prompt, and bills for it.
                failure.prompt_consumed = True
                failure.usage = PartialUsage(
                    model=streaming.default_model, completion_chars=progress.chars
                )
        except ProviderError as exc:
            failure = exc
        provider_seconds = time.perf_counter() - asked
        if failure is not None:
            self._metrics.provider_seconds.labels(failure.provider, "failed").observe(
                provider_seconds
            )
            now = self._clock()
            charged = [*progress.charged, failure]
            owed = owed_spends(Booking.of(request), charged, prompt, self._providers, now)
            outcome = await record_failure(
                self._recorder, request, failure, owed, now, confirm_within=confirm_within()
            )
            observe_turn(self._metrics, started, provider_seconds)
            return outcome
        self._metrics.provider_seconds.labels(provider.name, "ok").observe(provider_seconds)
        latency_ms = round(provider_seconds * 1000, 3)

        now = self._clock()
        spent = spend_of(
            result,
            at=now,
            turn_id=request.turn_id,
            channel=request.channel,
            user=request.user,
            purpose=request.purpose,
            provider=provider.name,
            prompt_chars=prompt_length(prompt),
        )
        owed = owed_spends(Booking.of(request), progress.charged, prompt, self._providers, now)
        end = TurnCompleted(
            at=now,
            turn_id=request.turn_id,
            channel=request.channel,
            user=request.user,
            content=result.content,
            provider=provider.name,
            model=result.model,
            latency_ms=latency_ms,
            finish_reason=result.finish_reason,
            fallback_from=passed_over,
        )
        try:
            await self._recorder.record(
                *with_turn_ids(request.turn_id, [*owed, spent], end),
                confirm_within=confirm_within(),
            )
        except AppendRefused as refused:
            return await record_unstored(
                self._recorder,
                request,
                [*owed, spent],
                refused,
                now,
                provider.name,
                confirm_within=confirm_within(),
            )
        except OutcomeUnknown as exc:
            log_kv(logger, "turn_outcome_unknown", level=logging.WARNING, error=str(exc))
            text = outcome_unknown(request.turn_id, with_request_id=with_request_id)
            return Outcome.error(text, turn_id=request.turn_id, provider=provider.name)
        except EventsQuarantined as exc:
            log_kv(logger, "turn_closed_meanwhile", level=logging.WARNING, error=str(exc))
            text = closed_meanwhile(request.turn_id)
            return Outcome.error(text, turn_id=request.turn_id, provider=provider.name)
        observe_turn(self._metrics, started, provider_seconds)
        tokens_used = tokens_of([*owed, spent])
        log_kv(
            logger,
            "turn_completed",
            channel=request.channel,
            user=request.user,
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
