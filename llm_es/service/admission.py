"""Admission: decide a turn against the user's limits and append it on the user's position.

`decide_admission` (pure) reads the user's usage view at stream position P;
`TurnAdmitted` is appended only if P is still the last sequence on the user's
subjects (`llm.ev.*.<user>.>`), so a concurrent admission for the user on any
instance makes the append fail: fold what it wrote and decide again. No limit
is overshot by a race. Inside one process a per-user lock keeps a user's own
requests from racing each other.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import cast

from llm_es.config import RateLimitsConfig
from llm_es.domain.events import TurnAdmitted, TurnRejected
from llm_es.domain.limits import TurnRequest, decide_admission
from llm_es.domain.views import UsageView, usage_key
from llm_es.errors import IntegrityError, OperationalError
from llm_es.service.recording import Recorder
from llm_es.service.user_locks import UserLocks

ADMIT_BACKOFF_SECONDS = 0.001


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
        """Turns refused here by a limit."""
        self.conflicts = 0
        """Conditional appends of admissions that lost a race (and were decided again)."""

    async def admit_turn(
        self, request: TurnRequest, prompt_estimate: int, max_tokens: int
    ) -> TurnAdmitted | TurnRejected:
        """Decide and append the admission on the user's position; retry on races.

        Returns once the views include the appended event. OperationalError when
        `retries` decisions in a row lost their race.
        """
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
                decision = decide_admission(
                    request,
                    usage,
                    self._limits,
                    now=self._clock(),
                    prompt_tokens_estimate=prompt_estimate,
                    max_tokens=max_tokens,
                )
                if isinstance(decision, TurnRejected):
                    # A refusal consumes no budget, so it has no race to lose:
                    # appending it unconditionally keeps floods from contending.
                    await self._recorder.record(decision)
                    self.rejected += 1
                    return decision
                appended = time.perf_counter()
                try:
                    seq = await self._store.append(
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
                self.admitted += 1
                await self._recorder.wait_for(seq)
                self._recorder.append_seconds.observe(time.perf_counter() - appended)
                return decision
            raise OperationalError("too many concurrent requests for this user; try again")
