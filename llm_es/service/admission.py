"""Admission: decide a turn against the user's limits and append it on the user's position.

`decide_admission` (pure) reads the user's usage view at stream position P;
`TurnAdmitted` is appended only if P is still the last sequence on the user's
subjects (`llm.ev.*.<user>.>`), so a concurrent admission for the user on any
instance makes the append fail: fold what it wrote and decide again. No limit
is overshot by a race. Inside one process a per-user lock keeps a user's own
requests from racing each other.

A refusal is recorded (`TurnRejected`) only when it is the user's first by its
window in that window (`refusal_is_new`), on the same condition, so two instances
never both record it; the refusals after it are answered the same way and counted
here (`refusals_unrecorded`), not appended.

The decision's event id is derived from the turn id: a retried request (same
`request_id`, so the same turn id) is deduped by the stream and comes back as
`AlreadyDecided`, naming the first attempt's decision. That is why a refusal of
a request that carries a `request_id` is always appended (once per id): the
append is what tells a retry of an admitted turn from a new request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import msgspec

from llm_es.config import RateLimitsConfig
from llm_es.domain.events import TurnAdmitted, TurnRejected
from llm_es.domain.idempotency import turn_event_id
from llm_es.domain.limits import TurnRequest, decide_admission, refusal_is_new
from llm_es.domain.views import UsageView, usage_key
from llm_es.errors import IntegrityError, OperationalError
from llm_es.service.recording import Recorder
from llm_es.service.user_locks import UserLocks

ADMIT_BACKOFF_SECONDS = 0.001


@dataclass(frozen=True, slots=True)
class AlreadyDecided:
    """The turn was decided before (a retried request): its decision is stored at `seq`."""

    seq: int


class Admission:
    """Admits or rejects turns, exactly, and counts how it went."""

    def __init__(
        self,
        recorder: Recorder,
        limits: RateLimitsConfig,
        *,
        retries: int,
        clock: Callable[[], datetime],
    ) -> None:
        self._recorder = recorder
        self._store = recorder.store
        self._views = recorder.views
        self._limits = limits
        self._retries = retries
        self._clock = clock
        self.locks = UserLocks()
        """Serializes admissions per user inside this process."""
        self.admitted = 0
        """Turns admitted here (chat, complete and summarize)."""
        self.rejected = 0
        """Turns refused here by a limit, recorded or not."""
        self.refusals_unrecorded = 0
        """Refusals answered here but not appended: the user's refusal by that window was
        already recorded."""
        self.conflicts = 0
        """Conditional appends of admissions that lost a race (and were decided again)."""

    async def admit_turn(
        self,
        request: TurnRequest,
        prompt_estimate: int,
        max_tokens: int,
        *,
        retried: bool = False,
    ) -> TurnAdmitted | TurnRejected | AlreadyDecided:
        """Decide and append the admission on the user's position; retry on races.

        Returns once the views include the appended event. With `retried` (the
        turn id comes from a caller's request id) a refusal is appended with an
        ack too, so a turn decided before is told from a new one. OperationalError
        when `retries` decisions in a row lost their race.
        """
        decision_id = turn_event_id(request.turn_id, "decision")
        async with self.locks.hold(request.user):
            boundary = self._store.user_boundary(request.user)
            known_last: int | None = None
            for attempt in range(self._retries):
                usage = cast(UsageView | None, self._views.get(usage_key(request.user)))
                position = usage["seq"] if usage else 0
                if known_last is not None:
                    # Events the views skip (unreadable ones) still move the
                    # subject's last sequence; the views include all up to it.
                    position = max(position, known_last)
                decision = msgspec.structs.replace(
                    decide_admission(
                        request,
                        usage,
                        self._limits,
                        now=self._clock(),
                        prompt_tokens_estimate=prompt_estimate,
                        max_tokens=max_tokens,
                    ),
                    id=decision_id,
                )
                rejected = isinstance(decision, TurnRejected)
                if isinstance(decision, TurnRejected) and retried:
                    # Only the append can tell a retry of a decided turn (a
                    # duplicate) from a new request; a refusal consumes no
                    # budget, so it is appended without a condition.
                    refused = await self._store.append_once(decision)
                    await self._recorder.wait_for(refused.seq)
                    if refused.duplicate:
                        return AlreadyDecided(refused.seq)
                    self.rejected += 1
                    return decision
                if isinstance(decision, TurnRejected) and not refusal_is_new(usage, decision):
                    self.rejected += 1
                    self.refusals_unrecorded += 1
                    return decision
                started = time.perf_counter()
                try:
                    appended = await self._store.append_once(
                        decision, expected_last_seq=position, boundary=boundary
                    )
                except IntegrityError as conflict:
                    # Another writer got there first: fold what it wrote, decide again.
                    self.conflicts += 1
                    known_last = conflict.actual_last_seq or await self._store.last_seq(boundary)
                    await self._recorder.wait_for(known_last)
                    # Jitter spreads instances that keep colliding on one user.
                    await asyncio.sleep(random.uniform(0, ADMIT_BACKOFF_SECONDS) * min(attempt, 8))
                    continue
                await self._recorder.wait_for(appended.seq)
                if appended.duplicate:
                    return AlreadyDecided(appended.seq)
                self._recorder.append_seconds.observe(time.perf_counter() - started)
                if rejected:
                    self.rejected += 1
                else:
                    self.admitted += 1
                return decision
            raise OperationalError("too many concurrent requests for this user; try again")
