"""The event log: one JetStream stream, appends with idempotency and conditions, reads.

Subjects are `llm.ev.<channel>.<user>.<EventType>` with tokens from
`llm_es.domain.tokens`. An append sends the event id as `Nats-Msg-Id` (a retry inside
the duplicate window is a no-op) and can demand that the last event on a
subject filter is at a given sequence: the per-user boundary
`llm.ev.*.<user>.>` makes rate-limit admission exact across instances.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from llm_es import headers
from llm_es.domain.events import Event
from llm_es.domain.tokens import encode_name
from llm_es.errors import AppendRefused, IntegrityError, OperationalError
from llm_es.store.acks import OutgoingMessage, actual_last_seq, request_ack, request_atomic_ack
from llm_es.store.codec import encode_event
from llm_es.store.follow import read_bounded
from llm_es.store.quarantine import Quarantine, stored_ns_of
from llm_es.store.stream_settings import (
    event_log_config,
    fitted_stream_config,
    require_server_version,
    wait_for_leader,
)
from llm_es.store.subjects import SUBJECT_PREFIX, subject_of

__all__ = ["SUBJECT_PREFIX", "EventStore", "RecordedEvent", "subject_of"]

STREAM_NAME = "LLM_EVENTS"
READ_BUFFER = 1024
"""Events `read` lets wait before its consumer is held back."""


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: its stream sequence and subject."""

    seq: int
    subject: str
    event: Event


@dataclass(frozen=True, slots=True)
class LogSize:
    last_seq: int
    messages: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an append landed: its stream sequence, and whether the stream already held it.

    `duplicate` means an event with the same id was stored within the duplicate
    window (a retry): `seq` is that first event's sequence, and nothing new was stored.
    """

    seq: int
    duplicate: bool


class EventStore:
    """Append to and read from the `LLM_EVENTS` stream."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        *,
        stream: str = STREAM_NAME,
        prefix: str = SUBJECT_PREFIX,
        replicas: int = 1,
    ) -> None:
        self._nc = nc
        self._js = js
        self.stream = stream
        self.prefix = prefix
        self.replicas = replicas
        """Copies the log is kept at (`nats.replicas`); llm-es keeps its KV buckets at as many."""
        self.quarantine = Quarantine("store", prefix=prefix)
        """Events `read` and `event_at` skipped (`llm_es.store.quarantine`)."""

    async def ensure_stream(self) -> None:
        """Create the stream, or fit an existing one's settings up (`fitted_stream_config`).

        Never lowers what an operator set by hand (replicas, limits): a restart
        leaves a stream scaled to R3 at R3.
        """
        require_server_version(self._nc)
        config = event_log_config(self.stream, self.prefix, replicas=self.replicas)
        try:
            info = await self._js.stream_info(self.stream)
        except NotFoundError:
            try:
                await self._js.add_stream(config)
            except APIError as exc:
                raise OperationalError(f"cannot create stream {self.stream}: {exc}") from exc
            await wait_for_leader(self._js, self.stream)
            return
        fitted = fitted_stream_config(info.config, config)
        if fitted == info.config:
            return
        try:
            await self._js.update_stream(fitted)
        except APIError as exc:
            raise OperationalError(f"cannot update stream {self.stream}: {exc}") from exc

    def subject_for(self, event: Event) -> str:
        """`llm.ev.<channel>.<user>.<EventType>` with encoded tokens."""
        return subject_of(event, self.prefix)

    def user_boundary(self, user: str) -> str:
        """Subject filter of everything one user did, across channels."""
        return f"{self.prefix}.*.{encode_name(user)}.>"

    def channel_filter(self, channel: str) -> str:
        """Subject filter of one channel's events."""
        return f"{self.prefix}.{encode_name(channel)}.>"

    async def append(
        self,
        event: Event,
        *,
        expected_last_seq: int | None = None,
        boundary: str | None = None,
    ) -> int:
        """Append one event and return its stream sequence.

        With `expected_last_seq`, the append only succeeds if the last event on
        `boundary` (a subject filter; default the event's own subject) has that
        sequence (0: no event yet); otherwise IntegrityError.
        """
        appended = await self.append_once(
            event, expected_last_seq=expected_last_seq, boundary=boundary
        )
        return appended.seq

    async def append_once(
        self,
        event: Event,
        *,
        expected_last_seq: int | None = None,
        boundary: str | None = None,
    ) -> Appended:
        """`append`, telling a first append from one the stream dedupes by the event's id.

        nats-server checks `expected_last_seq` before the id: a retry whose user
        has moved on gets IntegrityError first, and its duplicate once decided again.
        """
        message = self._message(event)
        if expected_last_seq is not None:
            message.headers[headers.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected_last_seq)
            if boundary is not None:
                message.headers[headers.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT] = boundary
        ack = await request_ack(self._nc, message, stream=self.stream)
        return Appended(self._sequence_from(ack), bool(ack.get("duplicate")))

    async def append_all(self, events: Sequence[Event]) -> list[int]:
        """Append several events in order, pipelined (each idempotent, not atomic)."""
        return list(await asyncio.gather(*(self._publish(self._message(e)) for e in events)))

    async def send(self, events: Sequence[Event]) -> None:
        """Publish events in order without asking for acks (each idempotent by its id).

        For a caller that learns from the log itself that they are stored: an
        ordered consumer delivers only stored messages, so a read side that folds
        them has confirmed them (`llm_es.service.recording.Recorder.record`). A
        caller that does not see them in time appends them again with `append_all`
        (a stored one comes back as a duplicate with its sequence). The server
        sends no ack and this process waits for none: one write out, nothing back.
        """
        try:
            for event in events:
                await self._nc.publish(
                    self.subject_for(event), encode_event(event), headers={headers.MSG_ID: event.id}
                )
        except nats.errors.Error as exc:
            raise OperationalError(f"append to {self.stream} failed: {type(exc).__name__}") from exc

    async def append_atomic(self, events: Sequence[Event]) -> list[int]:
        """Append events as one atomic batch: all are stored or none is."""
        if not events:
            return []
        messages = [self._message(e) for e in events]
        ack = await request_atomic_ack(self._nc, messages, stream=self.stream)
        seq = self._sequence_from(ack)
        last = len(events)
        return list(range(seq - last + 1, seq + 1))

    def _message(self, event: Event) -> OutgoingMessage:
        """The message storing `event`, with its id as `Nats-Msg-Id`: the stream stores a
        retry within the duplicate window once."""
        return OutgoingMessage(
            self.subject_for(event), encode_event(event), {headers.MSG_ID: event.id}
        )

    async def _publish(self, message: OutgoingMessage) -> int:
        ack = await request_ack(self._nc, message, stream=self.stream)
        return self._sequence_from(ack)

    @staticmethod
    def _sequence_from(ack: dict[str, Any]) -> int:
        error = ack.get("error")
        if error is not None:
            if error.get("err_code") == headers.JS_ERR_WRONG_LAST_SEQUENCE:
                description = str(error.get("description", "wrong last sequence"))
                raise IntegrityError(description, actual_last_seq(description))
            raise AppendRefused(f"append refused: {error.get('description', error)}")
        seq: int = ack["seq"]
        return seq

    async def size(self) -> LogSize:
        """The log's last sequence, message count and bytes (one stream info request)."""
        state = (await self._js.stream_info(self.stream)).state
        return LogSize(state.last_seq, state.messages, state.bytes)

    async def first_seq(self) -> int:
        """The first sequence the stream still holds (above 1 once retention removed some)."""
        return int((await self._js.stream_info(self.stream)).state.first_seq)

    async def last_seq(self, subject_filter: str | None = None) -> int:
        """The stream's last sequence (0 when empty)."""
        info = await self._js.stream_info(self.stream)
        if subject_filter is None:
            return info.state.last_seq
        return await self._last_seq_on(subject_filter)

    async def _last_seq_on(self, subject_filter: str) -> int:
        try:
            msg = await self._js.get_last_msg(self.stream, subject_filter, direct=True)
        except NotFoundError:
            return 0
        return msg.seq or 0

    async def event_at(self, seq: int) -> RecordedEvent | None:
        """The event stored at `seq` (a direct get), or None when there is none or it is
        quarantined."""
        try:
            msg = await self._js.get_msg(self.stream, seq, direct=True)
        except NotFoundError:
            return None
        if msg.data is None or msg.subject is None:
            return None
        event = self.quarantine.admit(seq, msg.subject, msg.data, stored_ns_of(msg.time))
        return None if event is None else RecordedEvent(seq, msg.subject, event)

    async def read(
        self,
        subject_filter: str | None = None,
        *,
        from_seq: int = 1,
        to_seq: int | None = None,
        idle_timeout: float = 5.0,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield stored events matching the filter, in order, up to `to_seq` or the end.

        "The end" is the last matching event when the read starts; events
        appended meanwhile are not included. Quarantined events are skipped.
        """
        subject_filter = subject_filter or f"{self.prefix}.>"
        # The last matching event now bounds the read, so it ends without a timeout.
        end = await self._last_seq_on(subject_filter)
        if to_seq is not None:
            end = min(end, to_seq)
        if end < from_seq:
            return
        messages = read_bounded(
            self._js,
            self.stream,
            subject_filter,
            after=from_seq - 1,
            until=end,
            idle_seconds=idle_timeout,
            buffer=READ_BUFFER,
        )
        async with contextlib.aclosing(messages):
            async for message in messages:
                if message is None:
                    raise TimeoutError(f"no event of {subject_filter} within {idle_timeout} s")
                seq, subject, data, stored_ns = message
                event = self.quarantine.admit(seq, subject, data, stored_ns)
                if event is not None:
                    yield RecordedEvent(seq, subject, event)
