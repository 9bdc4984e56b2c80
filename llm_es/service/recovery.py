"""Recovery: close the turns nobody will end (their instance stopped mid-turn).

Gathers what `llm_es.domain.abandoned` decides on: the open turns of the usage
views not running here, who runs each (from its `TurnAdmitted`) and whether
those instances are alive. Each close is appended on the user's position, so
two instances never close the same turn twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import cast

from llm_es.domain.abandoned import OpenTurnFacts, Survivors, decide_abandoned, past_deadline
from llm_es.domain.events import TurnAdmitted
from llm_es.domain.views import OpenTurn, UsageView
from llm_es.errors import IntegrityError
from llm_es.logs import log_kv
from llm_es.service.recording import Recorder

logger = logging.getLogger(__name__)

IsAlive = Callable[[str], Awaitable[bool]]
"""Whether an instance (by id) still sends its heartbeat."""


class Recovery:
    """Closes abandoned turns as failed (`abandoned`), so reservations never leak."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        clock: Callable[[], datetime],
        instance_id: str,
        started_at: datetime,
        in_flight: Collection[str],
        deadline_seconds: float,
    ) -> None:
        self._recorder = recorder
        self._store = recorder.store
        self._views = recorder.views
        self._clock = clock
        self._instance_id = instance_id
        self._started_at = started_at
        self._in_flight = in_flight
        self._deadline = deadline_seconds

    async def close_abandoned_turns(self, is_alive: IsAlive) -> int:
        """Close every abandoned turn; return how many were closed.

        A turn is abandoned when it is not running here and its instance is this
        one (an earlier run with the same instance id, or a turn whose end this
        run could not append), is no longer alive, or has run past the longest a
        provider call can take.
        """
        await self._recorder.catch_up()
        now = self._clock()
        closed = 0
        for key in self._views.keys_under("usage."):
            usage = cast(UsageView | None, self._views.get(key))
            if usage is None or not usage["open_turns"]:
                continue
            # Read after the view: a turn of this process in it was put in flight
            # before its admission, and leaves only once its end is appended.
            running = frozenset(self._in_flight)
            turns = [
                await self._facts(usage["user"], turn_id, turn, now)
                for turn_id, turn in list(usage["open_turns"].items())
                if turn_id not in running
            ]
            others = {t.owner for t in turns if t.owner and t.owner != self._instance_id}
            survivors = Survivors(
                this_instance=self._instance_id,
                started_at=self._started_at,
                alive={owner: await is_alive(owner) for owner in sorted(others)},
                running=running,
            )
            position = usage["seq"]
            for failed in decide_abandoned(
                turns, survivors, now=now, deadline_seconds=self._deadline
            ):
                try:
                    position = await self._store.append(
                        failed,
                        expected_last_seq=position,
                        boundary=self._store.user_boundary(usage["user"]),
                    )
                except IntegrityError:
                    break  # the user moved on meanwhile: look again at the next sweep
                await self._recorder.wait_for(position)
                closed += 1
        if closed:
            log_kv(logger, "abandoned_turns_closed", count=closed)
        return closed

    async def _facts(self, user: str, turn_id: str, turn: OpenTurn, now: datetime) -> OpenTurnFacts:
        """An open turn with its owner, read from its `TurnAdmitted` unless past its deadline."""
        admitted_at = datetime.fromisoformat(turn["admitted_at"])
        owner: str | None = None
        if not past_deadline(admitted_at, now, self._deadline):
            recorded = await self._store.event_at(turn["admitted_seq"])
            event = recorded.event if recorded else None
            owner = event.instance if isinstance(event, TurnAdmitted) else ""
        return OpenTurnFacts(
            turn_id=turn_id,
            user=user,
            channel=turn["channel"],
            admitted_at=admitted_at,
            owner=owner,
        )
