"""Which stored events a reader may fold: the one check every reader of the log shares.

The log is untrusted input: anyone who may publish on `llm.ev.>` can store
anything there, and the stream refuses deletes. `admit_event` decodes an event
strictly (`llm_es.store.codec`: types and ranges of `llm_es.domain.events`) and
then checks what one event can be checked against: its subject (channel, user
and type tokens must be the body's) and its append time (the writer's `at` may
not be after it by more than `MAX_CLOCK_SKEW_SECONDS`). Both come from the
stream, so the answer depends on the stored message alone: the live views, the
publisher and a rebuild refuse the same events, and the views stay a pure
function of the log.

A reader that reads the log in order also gives its `Quarantine` the turns
open where it starts (`llm_es.domain.turn_order.OpenTurns`): then an end or a
spend must name an open turn of its user, and an admission a turn not open.

An event that fails is quarantined: `Quarantine` skips it, counts it, keeps its
sequence and logs one ERROR with the sequence and the reason (never the
event's content).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from llm_es.domain.events import ContextSummarized, Event
from llm_es.domain.turn_order import OpenTurns
from llm_es.errors import ValidationError
from llm_es.logs import log_kv
from llm_es.store.codec import UnknownEventError, decode_event
from llm_es.store.subjects import SUBJECT_PREFIX, name_token, subject_of

logger = logging.getLogger("llm_es.store.quarantine")

MAX_CLOCK_SKEW_SECONDS = 60.0
"""How far an event's `at` may be after the stream's append time: writers stamp events
just before they append, so only a clock that is wrong (or a forged time) gets past it."""
MAX_LISTED = 1000
"""Quarantined sequences a reader keeps to report (the count goes on past it)."""
MAX_REASON_CHARS = 200
"""A reason quotes at most a type name from the body; longer ones are cut."""
_SKEW_NS = int(MAX_CLOCK_SKEW_SECONDS * 1e9)


class InadmissibleEventError(UnknownEventError):
    """The event decodes, but its subject, time or sequence says it is not genuine."""


def admit_event(
    seq: int, subject: str, data: bytes, stored_ns: int, *, prefix: str = SUBJECT_PREFIX
) -> Event:
    """The event stored at `seq` on `subject`, appended at `stored_ns` (ns since the epoch),
    in a log whose subjects start with `prefix`.

    Raises UnknownEventError (InadmissibleEventError for the checks beyond decoding)
    when the event must be quarantined.
    """
    event = decode_event(data)
    reason = subject_mismatch(subject, event, prefix) or _time_or_order(seq, event, stored_ns)
    if reason is not None:
        raise InadmissibleEventError(f"{event.TYPE}: {reason}")
    return event


def subject_mismatch(subject: str, event: Event, prefix: str = SUBJECT_PREFIX) -> str | None:
    """Why `subject` is not exactly the one the event is stored on (None: it is)."""
    try:
        if subject == subject_of(event, prefix):
            return None
    except ValidationError:
        return "a name in the body cannot be a subject token"
    head, _, tokens = subject.partition(f"{prefix}.")
    parts = tokens.split(".")
    if head or len(parts) != 3:
        return f"subject is not {prefix}.<channel>.<user>.<type>"
    channel, _, type_token = parts
    if type_token != event.TYPE:
        return "subject names another event type than the body"
    if channel != name_token(event.channel_name):
        return "subject names another channel than the body"
    return "subject names another user than the body"


def _time_or_order(seq: int, event: Event, stored_ns: int) -> str | None:
    # Seconds as floats: precise to well under a microsecond at today's epoch.
    if stored_ns > 0 and (at := event.at.timestamp()) > (stored_ns + _SKEW_NS) / 1e9:
        limit = f"{MAX_CLOCK_SKEW_SECONDS:g} s"
        return f"time is {at - stored_ns / 1e9:.0f} s after its append (limit {limit})"
    if type(event) is ContextSummarized and event.through_seq >= seq:
        return "summary covers events after its own sequence"
    return None


def stored_ns_of(moment: datetime | None) -> int:
    """A stream message's time (a direct get's `time`) as ns since the epoch; 0 if unknown."""
    return 0 if moment is None else int(moment.timestamp() * 1e9)


@dataclass
class Quarantine:
    """One reader's quarantined events: admitted or skipped alike by every reader."""

    reader: str
    """Who reads (`views`, `publisher`, `verify`, ...): named in each log line."""
    prefix: str = SUBJECT_PREFIX
    """The log's subject prefix (an `EventStore`'s)."""
    turns: OpenTurns | None = None
    """The open turns at the reader's position, for a reader that reads in log order and
    meets each sequence once; None for one that reads events alone (no turn rule)."""
    count: int = 0
    sequences: list[int] = field(default_factory=list)
    """The first `MAX_LISTED` quarantined sequences, in the order met."""
    _seen: set[int] = field(default_factory=set, repr=False)

    def admit(self, seq: int, subject: str, data: bytes, stored_ns: int) -> Event | None:
        """The event, or None when it is quarantined (counted and logged once per sequence)."""
        admitted = self.admit_or_reason(seq, subject, data, stored_ns)
        if isinstance(admitted, str):
            self.record(seq, admitted)
            return None
        return admitted

    def admit_or_reason(self, seq: int, subject: str, data: bytes, stored_ns: int) -> Event | str:
        """The event, or why it is not admissible (for a caller that records it itself)."""
        try:
            event = admit_event(seq, subject, data, stored_ns, prefix=self.prefix)
        except UnknownEventError as exc:
            return str(exc)[:MAX_REASON_CHARS]
        if self.turns is not None and (broken := self.turns.admit(event, stored_ns)) is not None:
            return f"{event.TYPE}: {broken}"
        return event

    def record(self, seq: int, reason: str) -> None:
        """Count `seq` as quarantined for `reason`; a sequence met again is not counted twice."""
        if seq in self._seen:
            return
        self._seen.add(seq)
        self.count += 1
        if len(self.sequences) < MAX_LISTED:
            self.sequences.append(seq)
        log_kv(
            logger,
            "event_quarantined",
            level=logging.ERROR,
            reader=self.reader,
            seq=seq,
            reason=reason[:MAX_REASON_CHARS],
        )

    def as_dict(self) -> dict[str, object]:
        return {"count": self.count, "sequences": sorted(self.sequences)}
