"""Recovery decider: which open turns nobody will end any more, and the event closing each.

Pure: the service gathers the open turns from the usage views, who runs each
(the instance its `TurnAdmitted` names), which turns this process is running and
whether the other instances are alive, and passes them in with the clock and the
turns' deadline. A close is `TurnFailed(error_type="abandoned")`, so the turn's
reservation is released. Its id is derived from the turn (`turn_event_id(turn,
"abandoned")`), so two closes of one turn are stored once. Should the owner's
own end still arrive after it (appended late, after a reconnect), every reader
keeps the first end by the turn rule (`llm_es.domain.turn_order`), and the
owner, told its end was quarantined, answers that the turn was closed. A turn
ends once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from llm_es.domain.events import TurnFailed
from llm_es.domain.idempotency import turn_event_id

ABANDON_GRACE_SECONDS = 30.0
"""Past its deadline, a turn whose instance still looks alive is closed after this much more."""

ABANDONED_ERROR = "turn was admitted but never ended (its instance stopped mid-turn)"

UNRECORDED_END_ERROR = (
    "turn was admitted but its end could not be recorded (the log was unavailable)"
)


@dataclass(frozen=True, slots=True)
class OpenTurnFacts:
    """An open turn as recovery sees it."""

    turn_id: str
    user: str
    channel: str | None
    admitted_at: datetime
    owner: str | None
    """The instance running it; "" for turns admitted before instances were recorded,
    None when not looked up (a turn past its deadline needs no owner)."""


@dataclass(frozen=True, slots=True)
class Survivors:
    """What recovery knows about instances: this one, what it runs, and which others are alive."""

    this_instance: str
    started_at: datetime
    """When this process started: its own turns admitted earlier belong to a dead run."""
    alive: Mapping[str, bool]
    """Every other owner named by the open turns not past their deadline."""
    running: Collection[str] = ()
    """The turns this process is running now (from before their admission to their end)."""


def past_deadline(admitted_at: datetime, now: datetime, deadline_seconds: float) -> bool:
    """Whether a turn has run past the longest it may run, and the grace after it."""
    return (now - admitted_at).total_seconds() > deadline_seconds + ABANDON_GRACE_SECONDS


def is_abandoned(
    turn: OpenTurnFacts, survivors: Survivors, *, now: datetime, deadline_seconds: float
) -> bool:
    """Never while this process runs it; else past its deadline, or when its instance is gone.

    A turn of this instance that this process is not running is gone: it is from
    an earlier run, or its end could not be appended (the log was unavailable), so
    it is closed at once instead of holding its reservation until the deadline.
    One with no recorded owner waits for the deadline.
    """
    if turn.turn_id in survivors.running:
        return False
    if past_deadline(turn.admitted_at, now, deadline_seconds):
        return True
    if not turn.owner:
        return False
    if turn.owner == survivors.this_instance:
        return True
    return not survivors.alive[turn.owner]


def abandon_reason(turn: OpenTurnFacts, survivors: Survivors) -> str:
    """The error text closing an abandoned turn: its instance stopped, or its end was lost."""
    unrecorded = turn.owner == survivors.this_instance and turn.admitted_at >= survivors.started_at
    return UNRECORDED_END_ERROR if unrecorded else ABANDONED_ERROR


def decide_abandoned(
    turns: Iterable[OpenTurnFacts],
    survivors: Survivors,
    *,
    now: datetime,
    deadline_seconds: float,
) -> list[TurnFailed]:
    """A `TurnFailed(abandoned)` for each abandoned turn, in the order given."""
    return [
        TurnFailed(
            id=turn_event_id(turn.turn_id, "abandoned"),
            at=now,
            turn_id=turn.turn_id,
            channel=turn.channel,
            user=turn.user,
            error_type="abandoned",
            error=abandon_reason(turn, survivors),
        )
        for turn in turns
        if is_abandoned(turn, survivors, now=now, deadline_seconds=deadline_seconds)
    ]
