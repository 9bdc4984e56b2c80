"""Asking the providers in order: the requested (or default) one, then the fallbacks.

Only outages (down, slow, overloaded) move a turn down the chain, and never
once pieces of a streamed answer were passed on. How long the whole chain may
take is a turn's deadline.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from llm_es.config import Config
from llm_es.domain.messages import ChatMessage
from llm_es.errors import (
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
from llm_es.providers.base import CompletionResult, LLMProvider

logger = logging.getLogger(__name__)

RETRY_WAIT_ALLOWANCE_SECONDS = 10.0
"""Room in a turn's deadline for each retry's backoff."""

ChunkSink = Callable[[str], Awaitable[None]]
"""Receives each piece of a streamed answer as it arrives."""


@dataclass(slots=True)
class StreamProgress:
    """How far a turn's provider calls got: what the turn owes however it ends."""

    provider: LLMProvider | None = None
    """The provider whose pieces were passed on (None before the first piece)."""
    chars: int = 0
    """Characters passed on so far."""
    charged: list[ProviderError] = field(default_factory=list)
    """Failures of providers passed over for a fallback after they had taken the prompt."""


def provider_chain(
    config: Config, providers: Mapping[str, LLMProvider], requested: str | None = None
) -> list[LLMProvider]:
    """The provider to ask first (the request's, else the default), then the fallbacks."""
    first = requested or config.default_provider
    if first not in providers:
        raise ValidationError(f"Provider '{first}' is not configured", "provider")
    names = [first, *(n for n in config.fallback_providers if n != first)]
    return [providers[n] for n in names if n in providers]


def turn_deadline_seconds(config: Config) -> float:
    """The longest a turn may run: every provider's timeout and retries, in order."""
    total = 0.0
    for provider_name in {config.default_provider, *config.fallback_providers}:
        settings = config.providers.get(provider_name)
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


async def ask_providers(
    chain: Sequence[LLMProvider],
    prompt: list[ChatMessage],
    max_tokens: int,
    *,
    temperature: float | None = None,
    on_chunk: ChunkSink | None = None,
    progress: StreamProgress | None = None,
) -> tuple[LLMProvider, CompletionResult, tuple[str, ...]]:
    """Ask each provider in turn until one answers; only outages move down the chain.

    Returns who answered, the answer, and the providers passed over. A stream
    that already passed pieces on is never retried elsewhere: the caller has
    seen part of an answer. `progress` follows the pieces passed on.
    """
    passed_over: list[str] = []
    for provider in chain:
        streamed = False
        try:
            if on_chunk is None:
                result = await provider.chat(prompt, max_tokens=max_tokens, temperature=temperature)
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
                    raise ProviderBadResponse(provider.name, f"{provider.name}: stream ended early")
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
