"""Conditional appends: each subject's positions strictly increase, whoever writes.

Every subject the recorders write holds messages with strictly increasing
positions (header `Es-Position`): an aggregate's events by originator version,
an application's tracking records by notification id. An append names the
position it writes and the sequence of the subject's last message it expects
(`Nats-Expected-Last-Subject-Sequence`); JetStream refuses it (err 10071) when
another message landed on the subject meanwhile. Several appends go out as one
atomic batch (`llm_es.store.log.request_atomic_ack`): all are stored, with
consecutive sequences, or none is.

The last (sequence, position) of recently used subjects is cached, so an
append usually needs one round trip; a refused append re-reads the subjects it
touched, decides again on what the server holds, and retries a bounded number
of times.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import nats.errors
from eventsourcing.persistence import DataError, IntegrityError, OperationalError

from llm_es import errors as llm_errors
from llm_es import headers
from llm_es.eventsourcing_nats._connection import Connection
from llm_es.eventsourcing_nats._reads import DirectGets, StreamMessage
from llm_es.store.acks import OutgoingMessage, request_ack, request_atomic_ack

MAX_APPEND_ATTEMPTS = 4
"""Sends of one append before a conflict that keeps changing is reported as IntegrityError."""
CACHE_SIZE = 10_000
"""Subjects whose last (sequence, position) is remembered."""
_CONFLICT_CODES = frozenset(
    {headers.JS_ERR_WRONG_LAST_SEQUENCE, headers.JS_ERR_WRONG_LAST_SEQUENCE_CONSTANT}
)


@dataclasses.dataclass(frozen=True, slots=True)
class Append:
    """A message to append to a subject whose positions strictly increase.

    The append is refused (IntegrityError) unless `position` is above the
    position of the subject's last message.
    """

    subject: str
    position: int
    payload: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class _Last:
    """A subject's last message as known: sequence (0: none) and position (None: none)."""

    seq: int
    position: int | None

    def covers(self, position: int) -> bool:
        """True when a message at `position` would not be above this last one."""
        return self.position is not None and position <= self.position


_EMPTY = _Last(0, None)


class Appender:
    """Appends to the stream; knows the last message of the subjects it wrote or read whole."""

    def __init__(self, connection: Connection, reads: DirectGets) -> None:
        self._connection = connection
        self._reads = reads
        self._cache: collections.OrderedDict[str, _Last] = collections.OrderedDict()

    async def append(self, appends: Sequence[Append]) -> list[int]:
        subjects: dict[str, int] = {}  # subject -> position of its first append
        previous: dict[str, int] = {}
        for item in appends:
            before = previous.get(item.subject)
            if before is not None and item.position <= before:
                raise IntegrityError(
                    f"position {item.position} on {item.subject} does not follow {before}"
                )
            previous[item.subject] = item.position
            subjects.setdefault(item.subject, item.position)
        verified: set[str] = set()
        for _attempt in range(MAX_APPEND_ATTEMPTS):
            known = {subject: self._cache.get(subject, _EMPTY) for subject in subjects}
            behind = [
                subject for subject, first in subjects.items() if known[subject].covers(first)
            ]
            if behind:
                unverified = [subject for subject in behind if subject not in verified]
                if not unverified:
                    subject = behind[0]
                    raise IntegrityError(
                        f"position {subjects[subject]} on {subject} is not above the "
                        f"stored {known[subject].position}"
                    )
                await self._refresh(unverified)
                verified.update(unverified)
                continue
            ack = await self._send(appends, known)
            error = ack.get("error")
            if error is None:
                return self._accepted(appends, ack)
            code = error.get("err_code")
            if code in _CONFLICT_CODES:
                await self._refresh(list(subjects))
                verified.update(subjects)
                continue
            description = error.get("description", "no description")
            if code == headers.JS_ERR_ATOMIC_BATCH_TOO_LARGE:
                raise DataError(
                    f"{len(appends)} messages are too many for one atomic batch: {description}"
                )
            raise OperationalError(
                f"stream {self._connection.settings.stream} refused the append: {description}"
            )
        raise IntegrityError(
            f"append to {', '.join(subjects)} kept conflicting after {MAX_APPEND_ATTEMPTS} tries"
        )

    async def read_subject(self, subject: str) -> list[StreamMessage]:
        """Every message on the subject; its last is what the next append there expects."""
        messages = await self._reads.read_subject(subject)
        if messages:
            last = messages[-1]
            self._remember(subject, _Last(last.seq, last.position))
        else:
            self._remember(subject, _EMPTY, force=True)
        return messages

    async def _send(self, appends: Sequence[Append], known: Mapping[str, _Last]) -> dict[str, Any]:
        nc = self._connection.client()
        expecting: set[str] = set()
        messages = []
        for item in appends:
            message_headers = {**item.headers, headers.ES_POSITION: str(item.position)}
            if item.subject not in expecting:
                # Only a subject's first message in a batch may carry the condition.
                expecting.add(item.subject)
                message_headers[headers.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(
                    known[item.subject].seq
                )
            messages.append(OutgoingMessage(item.subject, item.payload, message_headers))
        wait = self._connection.settings.request_timeout
        stream = self._connection.settings.stream
        try:
            if len(messages) == 1:
                return await request_ack(nc, messages[0], wait_seconds=wait, stream=stream)
            return await request_atomic_ack(nc, messages, wait_seconds=wait, stream=stream)
        except llm_errors.OperationalError as exc:
            raise OperationalError(str(exc)) from None
        except nats.errors.MaxPayloadError:
            raise DataError(
                f"a message is larger than the server's max_payload ({nc.max_payload} bytes)"
            ) from None
        except nats.errors.Error as exc:
            raise OperationalError(f"append to {stream} failed: {type(exc).__name__}") from None

    def _accepted(self, appends: Sequence[Append], ack: Mapping[str, Any]) -> list[int]:
        last_seq = int(ack["seq"])
        sequences = list(range(last_seq - len(appends) + 1, last_seq + 1))
        for seq, item in zip(sequences, appends, strict=True):
            self._remember(item.subject, _Last(seq, item.position))
        return sequences

    async def _refresh(self, subjects: Sequence[str]) -> None:
        lasts = await asyncio.gather(*(self._reads.read_last(subject) for subject in subjects))
        for subject, message in zip(subjects, lasts, strict=True):
            last = _EMPTY if message is None else _Last(message.seq, message.position)
            self._remember(subject, last, force=True)

    def _remember(self, subject: str, last: _Last, *, force: bool = False) -> None:
        cached = self._cache.get(subject)
        if force or cached is None or last.seq > cached.seq:
            self._cache[subject] = last
        self._cache.move_to_end(subject)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
