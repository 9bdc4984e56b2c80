"""How a turn ends without an answer: refused for its channel's share, failed, or
answered by a model but not storable.

Each is the turn's last word to its caller; a failure is recorded in the log
first, with what every provider that had taken the prompt is owed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime

from llm_es.domain import replies
from llm_es.domain.events import TokensSpent, TurnFailed
from llm_es.domain.idempotency import with_turn_ids
from llm_es.domain.limits import TurnRequest
from llm_es.errors import AppendRefused, EventsQuarantined, OutcomeUnknown, ProviderError
from llm_es.logs import log_kv
from llm_es.service.fallback import failure_type
from llm_es.service.ledger import tokens_of
from llm_es.service.outcome import Outcome
from llm_es.service.recording import Recorder

logger = logging.getLogger("llm_es.service.turns")


def refused_busy(request: TurnRequest, limit: int) -> Outcome:
    """The refusal of a turn over its channel's share of provider calls (nothing appended)."""
    log_kv(logger, "turn_refused_busy", channel=request.channel, user=request.user, limit=limit)
    text = replies.channel_busy(limit) if request.channel else replies.user_busy(limit)
    return Outcome.error(text, turn_id=request.turn_id, reason="busy")


async def record_failure(
    recorder: Recorder,
    request: TurnRequest,
    exc: ProviderError,
    owed: Sequence[TokensSpent],
    now: datetime,
    *,
    confirm_within: float,
) -> Outcome:
    """Record the failure after what the providers are `owed`; answer with the error."""
    error_type = failure_type(exc)
    failed = TurnFailed(
        at=now,
        turn_id=request.turn_id,
        channel=request.channel,
        user=request.user,
        error_type=error_type,
        error=str(exc),
    )
    # Not confirmed in time (or closed meanwhile), the turn failed all the same: its
    # answer stays the failure.
    with contextlib.suppress(OutcomeUnknown, EventsQuarantined):
        await recorder.record(
            *with_turn_ids(request.turn_id, owed, failed), confirm_within=confirm_within
        )
    log_kv(
        logger,
        "turn_failed",
        channel=request.channel,
        user=request.user,
        error_type=error_type,
        tokens=tokens_of(owed),
    )
    return Outcome.error(str(exc), turn_id=request.turn_id, provider=exc.provider)


async def record_unstored(
    recorder: Recorder,
    request: TurnRequest,
    spends: Sequence[TokensSpent],
    refused: AppendRefused,
    now: datetime,
    provider: str,
    *,
    confirm_within: float,
) -> Outcome:
    """Close a turn whose answer the log refused (e.g. larger than the operator's
    `max_msg_size`): its spends are booked and it ends `TurnFailed(not_stored)`, so
    no reservation stays open. A log that refuses this too (full) raises to the caller."""
    failed = TurnFailed(
        at=now,
        turn_id=request.turn_id,
        channel=request.channel,
        user=request.user,
        error_type="not_stored",
        error=f"the answer could not be stored: {refused}",
    )
    with contextlib.suppress(OutcomeUnknown, EventsQuarantined):
        await recorder.record(
            *with_turn_ids(request.turn_id, spends, failed), confirm_within=confirm_within
        )
    log_kv(
        logger,
        "turn_not_stored",
        level=logging.WARNING,
        channel=request.channel,
        user=request.user,
        error=str(refused),
    )
    return Outcome.error(
        replies.answer_not_stored(str(refused)), turn_id=request.turn_id, provider=provider
    )
