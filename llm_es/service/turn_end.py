"""How a turn ends without an answer: refused for its channel's share, or failed.

Both are the turn's last word to its caller; a failure is recorded in the log
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
from llm_es.errors import OutcomeUnknown, ProviderError
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
    # Not confirmed in time, the turn failed all the same: its answer stays the failure.
    with contextlib.suppress(OutcomeUnknown):
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
