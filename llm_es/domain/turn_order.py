"""The turn rule every reader of the log applies: an end or a spend names a turn that is open.

A turn opens with its `TurnAdmitted` and closes with its first end
(`TurnCompleted` or `TurnFailed`); its `TokensSpent` come between. So an event
that ends a turn, or charges a user for one, is genuine only if that user's
turn is open at its place in the log:

- an end or spend whose turn was never admitted is forged (a `TokensSpent`
  with a made-up turn id would charge a user tokens they never spent; a
  `TurnCompleted` would put words in the model's mouth);
- a second end of a turn is a race lost (the owner's end appended late beside
  recovery's `abandoned` close) or a replay: the first end stands;
- an admission whose turn is already open would reserve its tokens twice.

A spend with no user of a context summary has no turn (it charges nobody).

`OpenTurns` is the fold that answers it: pure, its state the open turns (few:
turns run for at most their deadline, and recovery closes the rest). A reader
that folds from the log's first event, or resumes from a checkpoint of the open
turns, decides exactly. One that starts in the middle without them (a log cut
by retention, a checkpoint from before 0.4) cannot know the turns opened before
its start: it admits the ends and spends of unknown turns stored within
`UNKNOWN_TURN_TRUST` of its first event, and decides exactly after. The window
is measured in the stream's append times, which no writer chooses.
`llm_es.store.quarantine.Quarantine` applies the rule after its checks of one event.
"""

from __future__ import annotations

from collections.abc import Mapping

from llm_es.domain.events import Event, TokensSpent, TurnAdmitted, TurnCompleted, TurnFailed

UNKNOWN_TURN_TRUST_NS = 3600 * 1_000_000_000
"""How long (in stream time) after its first event a reader that started mid-log admits
the ends and spends of turns it never saw open: far longer than a turn runs (its
deadline plus recovery's grace), so a genuine turn open where the reader started has
ended within it."""

SUMMARY_PURPOSE = "context_summary"
"""A context summary's spend: no turn, no user, charged to nobody."""


class OpenTurns:
    """The turns open at a reader's position in the log: turn id -> its user."""

    __slots__ = ("_open", "_started_mid_log", "_trust_until_ns")

    def __init__(
        self, open_turns: Mapping[str, str] | None = None, *, started_mid_log: bool = False
    ) -> None:
        """`open_turns`: those open where the reader starts (a checkpoint's), exact;
        `started_mid_log`: the reader starts after turns it does not know of."""
        self._open: dict[str, str] = dict(open_turns or {})
        self._started_mid_log = started_mid_log
        self._trust_until_ns: int | None = None

    def admit(self, event: Event, stored_ns: int) -> str | None:
        """Fold `event` (appended at `stored_ns`, ns since the epoch; 0 if unknown), or
        say why it breaks the turn rule and leave the state alone."""
        if self._started_mid_log:
            if self._trust_until_ns is None:
                self._trust_until_ns = stored_ns + UNKNOWN_TURN_TRUST_NS  # the first event
            elif stored_ns > self._trust_until_ns:
                self._started_mid_log = False  # every turn open now was seen opening
        if type(event) is TurnAdmitted:
            if event.turn_id in self._open:
                return "admits a turn that is already open"
            self._open[event.turn_id] = event.user or ""
            return None
        if type(event) is TokensSpent:
            if event.user is None and event.purpose == SUMMARY_PURPOSE:
                return None
            return self._names_open_turn(event.turn_id, event.user, stored_ns, "charges")
        if type(event) is TurnCompleted or type(event) is TurnFailed:
            reason = self._names_open_turn(event.turn_id, event.user, stored_ns, "ends")
            if reason is None:
                self._open.pop(event.turn_id, None)
            return reason
        return None

    def _names_open_turn(
        self, turn_id: str, user: str | None, stored_ns: int, verb: str
    ) -> str | None:
        owner = self._open.get(turn_id)
        if owner is not None:
            return None if owner == (user or "") else f"{verb} a turn of another user"
        trust_until = self._trust_until_ns
        if trust_until is not None and 0 < stored_ns <= trust_until:
            return None  # may be a turn opened before this reader's start
        return f"{verb} a turn that is not open (never admitted, or already ended)"

    def note(self, event: Event) -> None:
        """Fold an event another reader of the same log already admitted (no judgement)."""
        if type(event) is TurnAdmitted:
            self._open[event.turn_id] = event.user or ""
        elif type(event) is TurnCompleted or type(event) is TurnFailed:
            self._open.pop(event.turn_id, None)

    def snapshot(self) -> dict[str, str] | None:
        """The open turns (turn id -> user), for a checkpoint; None while a reader that
        started mid-log is still in its trust window (turns opened before its start may
        be open, unknown to it: a checkpoint must not claim the list is whole)."""
        return None if self._started_mid_log else dict(self._open)

    def __len__(self) -> int:
        return len(self._open)
