"""Tests of llm_es.domain.abandoned: which open turns nobody will end, and how they close."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llm_es.domain.abandoned import (
    ABANDON_GRACE_SECONDS,
    ABANDONED_ERROR,
    UNRECORDED_END_ERROR,
    OpenTurnFacts,
    Survivors,
    decide_abandoned,
    is_abandoned,
    past_deadline,
)
from llm_es.domain.events import TurnFailed

STARTED = datetime(2024, 5, 17, 20, 0, 0, tzinfo=UTC)
NOW = STARTED + timedelta(seconds=5)
DEADLINE = 60.0
HERE = "worker-1"
SURVIVORS = Survivors(
    this_instance=HERE, started_at=STARTED, alive={"worker-2": True, "worker-3": False}
)


def turn(
    owner: str | None, *, seconds_ago: float = 1.0, turn_id: str = "t1", channel: str = "lobby"
) -> OpenTurnFacts:
    return OpenTurnFacts(
        turn_id=turn_id,
        user="alice",
        channel=channel,
        admitted_at=NOW - timedelta(seconds=seconds_ago),
        owner=owner,
    )


def abandoned(facts: OpenTurnFacts) -> bool:
    return is_abandoned(facts, SURVIVORS, now=NOW, deadline_seconds=DEADLINE)


def test_the_deadline_has_a_grace_period() -> None:
    """A turn is past its deadline only once the deadline and the grace have both gone by."""
    limit = DEADLINE + ABANDON_GRACE_SECONDS
    assert not past_deadline(NOW - timedelta(seconds=limit), NOW, DEADLINE)
    assert past_deadline(NOW - timedelta(seconds=limit + 0.001), NOW, DEADLINE)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (turn("worker-2"), False),  # a live instance still runs it
        (turn("worker-3"), True),  # its instance's heartbeat has expired
        (turn(HERE, seconds_ago=1.0), True),  # this process admitted it, ran it, lost its end
        (turn(HERE, seconds_ago=10.0), True),  # this instance's, from before this process
        (turn(""), False),  # admitted before instances were recorded: wait for the deadline
        (turn(None, seconds_ago=DEADLINE + ABANDON_GRACE_SECONDS + 1), True),  # past it
        (turn("worker-2", seconds_ago=DEADLINE + ABANDON_GRACE_SECONDS + 1), True),
    ],
    ids=[
        "alive",
        "dead",
        "this-process-not-running",
        "earlier-run",
        "no-owner",
        "past-deadline",
        "past-deadline-alive",
    ],
)
def test_which_turns_are_abandoned(facts: OpenTurnFacts, expected: bool) -> None:
    """Past the deadline whoever runs it; before it, only when its instance is gone."""
    assert abandoned(facts) is expected


def test_an_owner_whose_liveness_was_not_gathered_is_an_error() -> None:
    """Liveness is data the caller must supply: an unknown owner is not taken for dead."""
    with pytest.raises(KeyError):
        abandoned(turn("worker-9"))


def test_each_abandoned_turn_closes_with_one_turn_failed_in_order() -> None:
    """Only the abandoned turns get a TurnFailed(abandoned), in the order given, at `now`."""
    closes = decide_abandoned(
        [
            turn("worker-3", turn_id="t1"),
            turn("worker-2", turn_id="t2"),
            turn(None, turn_id="t3", channel="dm", seconds_ago=DEADLINE * 3),
        ],
        SURVIVORS,
        now=NOW,
        deadline_seconds=DEADLINE,
    )
    assert [(c.turn_id, c.channel, c.user) for c in closes] == [
        ("t1", "lobby", "alice"),
        ("t3", "dm", "alice"),
    ]
    for close in closes:
        assert isinstance(close, TurnFailed)
        assert (close.error_type, close.error, close.at) == ("abandoned", ABANDONED_ERROR, NOW)


def test_a_turn_this_process_runs_is_never_abandoned() -> None:
    """Running here: not closed, even past its deadline (the process ends it itself)."""
    survivors = Survivors(this_instance=HERE, started_at=STARTED, alive={}, running={"t1"})
    for seconds_ago in (1.0, DEADLINE + ABANDON_GRACE_SECONDS + 1):
        facts = turn(HERE, seconds_ago=seconds_ago)
        assert not is_abandoned(facts, survivors, now=NOW, deadline_seconds=DEADLINE)


def test_a_turn_whose_end_this_process_lost_closes_at_once_saying_so() -> None:
    """This process admitted it and no longer runs it (its end could not be appended): it is
    closed at once, before any deadline, with a text that says the end was not recorded; a
    turn of an earlier run keeps the "instance stopped" text."""
    closes = decide_abandoned(
        [
            turn(HERE, turn_id="lost-end", seconds_ago=1.0),
            turn(HERE, turn_id="old", seconds_ago=10),
        ],
        SURVIVORS,
        now=NOW,
        deadline_seconds=DEADLINE,
    )
    assert [(c.turn_id, c.error) for c in closes] == [
        ("lost-end", UNRECORDED_END_ERROR),
        ("old", ABANDONED_ERROR),
    ]
