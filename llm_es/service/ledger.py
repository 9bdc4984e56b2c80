"""The token ledger: a `TokensSpent` for every provider call the provider billed.

An answer books its real usage (estimated, and flagged, only where the
provider reported none). A call that failed after the provider had taken the
prompt is booked too: the figures it reported, or an estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from llm_es.domain.events import TokensSpent
from llm_es.domain.limits import TurnRequest, estimate_tokens
from llm_es.domain.messages import ChatMessage
from llm_es.domain.prompt import prompt_length
from llm_es.errors import PartialUsage, ProviderError
from llm_es.providers.base import CompletionResult, LLMProvider


@dataclass(frozen=True, slots=True)
class Booking:
    """Whom a turn's provider calls are booked to."""

    turn_id: str
    channel: str | None
    user: str | None
    purpose: str
    model: str
    """The model to name when a failed call reported none."""

    @classmethod
    def of(cls, request: TurnRequest) -> Booking:
        return cls(request.turn_id, request.channel, request.user, request.purpose, request.model)


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


def owed_spends(
    booking: Booking,
    failures: Sequence[ProviderError],
    prompt: Sequence[ChatMessage],
    providers: Mapping[str, LLMProvider],
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
            asked = providers.get(failure.provider)
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


def tokens_of(spends: Sequence[TokensSpent]) -> int:
    """Prompt plus completion tokens of some spends."""
    return sum(e.prompt_tokens + e.completion_tokens for e in spends)
