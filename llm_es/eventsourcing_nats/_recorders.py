"""The eventsourcing recorders on JetStream: aggregate, application, tracking and process.

Subjects under the stream's prefix `<P>` (tokens encoded by `llm_es.domain.tokens`):

    <P>.events.<originator id>       an application's stored events (notification log)
    <P>.<purpose>.<originator id>    other aggregate sequences, e.g. `snapshots`
    <P>.tracking.<application name>  tracking records (last notification id processed)
    <P>.view.<name>...               state of materialised views kept beside their tracking

A stored event is one message: the payload is the library's serialised state,
unchanged; `Es-Topic` holds its topic and `Es-Position` its originator
version. Notification ids are stream sequences.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DataError,
    InterfaceError,
    Notification,
    ProcessRecorder,
    Recorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from llm_es import headers
from llm_es.domain.tokens import decode_name, encode_name
from llm_es.errors import ValidationError
from llm_es.eventsourcing_nats._appends import Append
from llm_es.eventsourcing_nats._datastore import JetStreamDatastore
from llm_es.eventsourcing_nats._reads import StreamMessage

EVENTS = "events"
TRACKING = "tracking"
VIEW = "view"
_RESERVED_PURPOSES = frozenset({TRACKING, VIEW})
SELECT_PAGE_MIN = 32
"""Fewest messages read per request by `select_notifications` (others share the stream)."""
SELECT_PAGE_MAX = 1000
TAIL_SCANS = (4, 64)
"""How many messages at the end of the stream `max_notification_id` looks through for an
event, first and then, before it asks the server to search."""


class JetStreamRecorder(Recorder):
    """Base of the recorders: knows the datastore and the subject layout."""

    def __init__(self, datastore: JetStreamDatastore, *, purpose: str = EVENTS) -> None:
        if purpose in _RESERVED_PURPOSES:
            raise InterfaceError(f"{purpose!r} is reserved and cannot name an aggregate sequence")
        self.datastore = datastore
        self.purpose = purpose
        self._sequence_prefix = f"{datastore.prefix}.{_token(purpose)}."

    def create_stream(self) -> None:
        """Create the stream if it does not exist (the library's `create_table`)."""
        self.datastore.ensure_stream()

    def aggregate_subject(self, originator_id: UUID | str) -> str:
        """The subject of one aggregate sequence."""
        return self._sequence_prefix + _token(str(originator_id))

    @property
    def aggregate_filter(self) -> str:
        """The subject filter of every aggregate sequence of this recorder's purpose."""
        return self._sequence_prefix + ">"

    def tracking_subject(self, application_name: str) -> str:
        """The subject of an upstream application's tracking records."""
        return f"{self.datastore.prefix}.{TRACKING}.{_token(application_name)}"

    def originator_id(self, subject: str) -> UUID | str:
        """The originator id an aggregate subject stands for, typed by ORIGINATOR_ID_TYPE."""
        token = subject.removeprefix(self._sequence_prefix)
        try:
            name = decode_name(token)
            if name is None:
                raise ValueError(f"no originator id in {subject!r}")
            return UUID(name) if self.datastore.settings.originator_id_type == "uuid" else name
        except ValueError as exc:
            raise DataError(f"cannot read an originator id from {subject!r}: {exc}") from None

    def _appends(self, stored_events: Sequence[StoredEvent]) -> list[Append]:
        appends = []
        for event in stored_events:
            if "\r" in event.topic or "\n" in event.topic:
                raise DataError(f"topic {event.topic!r} contains a line break")
            appends.append(
                Append(
                    subject=self.aggregate_subject(event.originator_id),
                    position=event.originator_version,
                    payload=event.state,
                    headers={headers.ES_TOPIC: event.topic},
                )
            )
        return appends


class JetStreamAggregateRecorder(JetStreamRecorder, AggregateRecorder):
    """Aggregate sequences: one subject per aggregate, versions strictly increasing.

    A version not above the aggregate's last stored version is a conflict
    (IntegrityError), also when that version itself was never stored.
    """

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store the events atomically; IntegrityError if any version is taken."""
        self.datastore.append(self._appends(stored_events))
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """An aggregate's events with gt < version <= lte, by version, at most `limit`."""
        subject = self.aggregate_subject(originator_id)
        if desc and limit == 1 and lte is None:
            # Versions increase with the stream sequence: the last message is the answer.
            last = self.datastore.read_last(subject)
            messages = [] if last is None or (gt is not None and last.position <= gt) else [last]
        else:
            messages = [
                message
                for message in self.datastore.read_subject(subject)
                if (gt is None or message.position > gt)
                and (lte is None or message.position <= lte)
            ]
            if desc:
                messages.reverse()
            if limit is not None:
                messages = messages[: max(limit, 0)]
        if not messages:
            return []
        typed_id = self.originator_id(subject)
        return [
            StoredEvent(typed_id, message.position, message.topic, message.data)
            for message in messages
        ]


class JetStreamApplicationRecorder(JetStreamAggregateRecorder, ApplicationRecorder):
    """An application's events; notification ids are the messages' stream sequences."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store the events atomically and return their notification ids."""
        return self.datastore.append(self._appends(stored_events))

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Notifications with start <= id (or start < id) <= stop, of `topics` if given."""
        first = 1 if start is None else (start if inclusive_of_start else start + 1)
        wanted = frozenset(topics)
        notifications: list[Notification] = []
        seq = max(first, 1)
        # The stream is read without a subject filter (see JetStreamDatastore.read_range);
        # tracking records, snapshots and anything else in it are skipped here.
        while len(notifications) < limit and (stop is None or seq <= stop):
            missing = limit - len(notifications)
            count = SELECT_PAGE_MAX if wanted else max(2 * missing, SELECT_PAGE_MIN)
            count = min(count, SELECT_PAGE_MAX)
            if stop is not None:
                count = min(count, stop - seq + 1)
            page, pending = self.datastore.read_range(None, seq, count)
            for message in page:
                if stop is not None and message.seq > stop:
                    return notifications
                if not self.is_stored_event(message):
                    continue
                if wanted and message.topic not in wanted:
                    continue
                notifications.append(self.notification(message))
                if len(notifications) == limit:
                    return notifications
            if not page or pending == 0:
                break
            seq = page[-1].seq + 1
        return notifications

    def max_notification_id(self) -> int | None:
        """The stream sequence of the last stored event, None when there is none."""
        last = self.datastore.read_last(">")
        if last is None:
            return None
        if self.is_stored_event(last):
            return last.seq
        # Usually the tracking record of the last batch: the events are just before it.
        for size in TAIL_SCANS:
            tail, _ = self.datastore.read_range(None, max(last.seq - size + 1, 1), size)
            events = [message for message in tail if self.is_stored_event(message)]
            if events:
                return events[-1].seq
        found = self.datastore.read_last(self.aggregate_filter)  # slow on many subjects; rare
        return None if found is None else found.seq

    def is_stored_event(self, message: StreamMessage) -> bool:
        """True for a message of this recorder's aggregate sequences."""
        return message.subject.startswith(self._sequence_prefix)

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Notifications after `gt`, then new ones as they are stored (ordered consumer)."""
        return JetStreamSubscription(self, gt=gt, topics=topics)

    def notification(self, message: StreamMessage) -> Notification:
        """The notification a stored event message stands for."""
        return Notification(
            id=message.seq,
            originator_id=self.originator_id(message.subject),
            originator_version=message.position,
            topic=message.topic,
            state=message.data,
        )


class JetStreamTrackingRecorder(JetStreamRecorder, TrackingRecorder):
    """Tracking records, one subject per upstream application, ids strictly increasing.

    Materialised views can keep their state in the same stream and update it
    atomically with their tracking record: see `view_subject`, `read_view` and
    `write_view`.
    """

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record that `tracking.notification_id` was processed; IntegrityError unless it is new."""
        self.datastore.append([self.tracking_append(tracking)])

    def max_tracking_id(self, application_name: str) -> int | None:
        """The last notification id recorded for the application, None if none."""
        last = self.datastore.read_last(self.tracking_subject(application_name))
        return None if last is None else last.position

    def tracking_append(self, tracking: Tracking) -> Append:
        """The append that records a tracking object."""
        payload = {
            "application_name": tracking.application_name,
            "notification_id": tracking.notification_id,
        }
        return Append(
            subject=self.tracking_subject(tracking.application_name),
            position=tracking.notification_id,
            payload=orjson.dumps(payload),
        )

    def view_subject(self, *names: str) -> str:
        """`<P>.view.<name>...`: a subject for a view's own records."""
        if not names:
            raise InterfaceError("a view subject needs at least one name")
        return f"{self.datastore.prefix}.{VIEW}." + ".".join(_token(name) for name in names)

    def read_view(self, subject: str) -> StreamMessage | None:
        """The last record on a view subject (its `position` and `data`), None if none."""
        return self.datastore.read_last(subject)

    def write_view(self, appends: Sequence[Append], tracking: Tracking | None = None) -> None:
        """Append view records and, if given, the tracking record, all or nothing.

        Each record's position must be above its subject's last one (e.g. a
        counter's new value, or a revision number); IntegrityError otherwise,
        and when the tracking record is not new.
        """
        batch = list(appends)
        if tracking is not None:
            batch.append(self.tracking_append(tracking))
        self.datastore.append(batch)


class JetStreamProcessRecorder(
    JetStreamTrackingRecorder, JetStreamApplicationRecorder, ProcessRecorder
):
    """An application's events and its tracking records, stored together atomically."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Store the events and the `tracking` keyword argument in one atomic batch."""
        appends = self._appends(stored_events)
        tracking = kwargs.get("tracking")
        if tracking is not None:
            appends.append(self.tracking_append(tracking))
        return self.datastore.append(appends)[: len(stored_events)]


class JetStreamSubscription(Subscription[JetStreamApplicationRecorder]):
    """Iterates notifications from a JetStream ordered consumer until stopped."""

    def __init__(
        self,
        recorder: JetStreamApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._wanted = frozenset(topics)
        datastore = recorder.datastore
        self._feed = datastore.open_feed(recorder.aggregate_filter, (gt or 0) + 1)
        # Removes the consumer when stopped, or when the subscription is collected.
        self._remove_feed = weakref.finalize(self, datastore.close_feed, self._feed)

    def __next__(self) -> Notification:
        while not self._has_been_stopped:  # each turn takes a message or ends
            message = self._feed.take()
            if message is None or self._has_been_stopped:
                break
            if self._wanted and message.topic not in self._wanted:
                continue
            return self._recorder.notification(message)
        raise StopIteration

    def stop(self) -> None:
        """Stop iterating and remove the consumer (from any thread, never blocks)."""
        super().stop()
        self._remove_feed()


def _token(name: str) -> str:
    try:
        return encode_name(name)
    except ValidationError as exc:
        raise DataError(f"cannot use {name!r} in a subject: {exc}") from None
