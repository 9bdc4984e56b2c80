"""Answering a retried request from the log: the first attempt's outcome, never a second turn.

A request with a `request_id` names its turn (`llm_es.domain.idempotency`);
when admission finds that turn decided already, the answer is read back from
the log: the refusal, or the turn's end and spends, waiting (bounded) while
the first attempt is still running.
"""

from __future__ import annotations

import asyncio
import logging

from llm_es.domain.events import (
    Event,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
)
from llm_es.logs import log_kv
from llm_es.service.outcome import Outcome
from llm_es.service.recording import Recorder
from llm_es.store.sealed_log import SealingEventStore

logger = logging.getLogger(__name__)

RETRY_WAIT_GRACE_SECONDS = 5.0
"""How much longer than a turn's deadline a retry waits for the first attempt's end."""


def still_running(turn_id: str) -> str:
    """The answer to a retry whose first attempt has not ended within the retry's time."""
    return (
        f"This request (turn {turn_id}) is still being answered; its outcome is not known"
        " yet. Retry with the same request_id later to get it."
    )


def outcome_unknown(turn_id: str, *, with_request_id: bool) -> str:
    """The answer to a turn that ended while the log could not confirm its end in time."""
    text = (
        f"This request (turn {turn_id}) was answered, but the event log could not confirm"
        " it in time (NATS unavailable); its outcome is not known yet."
    )
    if with_request_id:
        return f"{text} Retry with the same request_id to get it."
    return f"{text} If it was recorded, it is in the channel's history once NATS is back."


def closed_meanwhile(turn_id: str) -> str:
    """The answer to a turn whose end reached the log only after the turn was closed as
    abandoned (the log was away past the turn's deadline): the log holds the close."""
    return (
        f"This request (turn {turn_id}) was answered too late: the event log was unavailable"
        " past its deadline and the turn was closed as failed, so the answer is not in the"
        " channel's history. Please ask again."
    )


async def retried_turn_outcome(
    recorder: Recorder, *, turn_id: str, user: str, decided_at: int, wait_seconds: float
) -> Outcome:
    """The outcome of turn `turn_id`, whose decision is stored at `decided_at`."""
    stored = await recorder.store.event_at(decided_at)
    decision = stored.event if stored is not None else None
    log_kv(logger, "request_retried", user=user, turn_id=turn_id, seq=decided_at)
    if isinstance(decision, TurnRejected) and decision.turn_id == turn_id:
        return Outcome.error(decision.detail, turn_id=turn_id, reason=decision.reason)
    if not isinstance(decision, TurnAdmitted) or decision.turn_id != turn_id:
        return Outcome.error(still_running(turn_id), turn_id=turn_id)
    end = recorder.expect_turn_end(turn_id)
    try:
        events = await _turn_events(recorder, user, turn_id, decided_at)
        if not any(isinstance(e, TurnCompleted | TurnFailed) for e in events):
            try:
                async with asyncio.timeout(wait_seconds):
                    await end
            except TimeoutError:
                return Outcome.error(still_running(turn_id), turn_id=turn_id)
            events = await _turn_events(recorder, user, turn_id, decided_at)
    finally:
        recorder.forget_turn_end(turn_id, end)
    return outcome_of(turn_id, decision, events)


async def _turn_events(recorder: Recorder, user: str, turn_id: str, after: int) -> list[Event]:
    """The turn's events the log holds from its decision on (the user's subjects only)."""
    store = recorder.store
    found: list[Event] = []
    async for recorded in store.read(store.user_boundary(user), from_seq=after + 1):
        if getattr(recorded.event, "turn_id", None) == turn_id:
            found.append(recorded.event)
    if isinstance(store, SealingEventStore):  # the answer is sealed under the user's key
        found = [await store.keyring.open_event(e) for e in found]
    return found


def outcome_of(turn_id: str, admitted: TurnAdmitted, events: list[Event]) -> Outcome:
    """What the first attempt answered, rebuilt from the turn's stored events."""
    spends = [e for e in events if isinstance(e, TokensSpent)]
    tokens_used = sum(e.prompt_tokens + e.completion_tokens for e in spends)
    for event in events:
        if isinstance(event, TurnCompleted):
            return Outcome.ok(
                event.content,
                content=event.content,
                turn_id=turn_id,
                tokens_used=tokens_used,
                provider=event.provider,
                model=event.model,
            )
        if isinstance(event, TurnFailed):
            provider = spends[-1].provider if spends else admitted.provider
            return Outcome.error(event.error, turn_id=turn_id, provider=provider)
    return Outcome.error(still_running(turn_id), turn_id=turn_id)
