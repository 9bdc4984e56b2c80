"""The JetStream datastore behind the recorders: one stream, its API synchronous and thread-safe.

Everything runs on the datastore's private event-loop thread (`_loop`): the
connection (`_connection`), conditional appends (`_appends`), direct-get
reads (`_reads`) and ordered-consumer feeds (`_feed`). The methods here hand
their work to that loop and wait for it, from any other thread.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

from llm_es.eventsourcing_nats._appends import Append, Appender
from llm_es.eventsourcing_nats._connection import Connection
from llm_es.eventsourcing_nats._feed import Feed, open_feed, remove_feed
from llm_es.eventsourcing_nats._loop import EventLoopThread
from llm_es.eventsourcing_nats._reads import DirectGets, StreamMessage
from llm_es.eventsourcing_nats._settings import JetStreamSettings


class JetStreamDatastore:
    """One NATS connection, on a private event-loop thread, to one stream."""

    def __init__(self, settings: JetStreamSettings) -> None:
        self.settings = settings
        self._thread = EventLoopThread(name=f"jetstream-{settings.stream}")
        self._connection = Connection(self._thread, settings)
        # The loop thread and its callbacks never refer to `self`, so a datastore
        # nobody closed is still closed once the last recorder using it is gone.
        self._finalizer = weakref.finalize(self, self._connection.close)
        self._reads = DirectGets(self._connection)
        self._appender = Appender(self._connection, self._reads)
        self._stream_ready = False
        self._stream_lock = threading.Lock()
        try:
            self._thread.run(self._connection.connect)
            self._thread.run(self._reads.subscribe)
        except BaseException:
            self.close()
            raise

    @property
    def prefix(self) -> str:
        """The subject prefix; the stream holds `<prefix>.>`."""
        return self.settings.subject_prefix

    def close(self) -> None:
        """Close the connection and stop the loop thread (idempotent)."""
        self._finalizer()

    def ensure_stream(self) -> None:
        """Create the stream, or make an existing one fit (subjects, atomic, direct); once."""
        with self._stream_lock:
            if not self._stream_ready:
                self._thread.run(self._connection.ensure_stream)
                self._stream_ready = True

    def append(self, appends: Sequence[Append]) -> list[int]:
        """Append atomically and return the stream sequences, in order.

        Raises IntegrityError when a position is not above its subject's last
        one (also within `appends`), DataError when a message or the batch is
        too large for the server, OperationalError when the server cannot be
        reached or refuses for another reason.
        """
        if not appends:
            return []
        return self._thread.run(self._appender.append, appends)

    def read_subject(self, subject: str) -> list[StreamMessage]:
        """Every message on one literal subject, in stream order."""
        return self._thread.run(self._appender.read_subject, subject)

    def read_last(self, subject_filter: str) -> StreamMessage | None:
        """The last message matching a subject filter, or None.

        Fast for a literal subject and for `>` (the whole stream); a partial
        wildcard costs the server time in proportion to the number of subjects.
        """
        return self._thread.run(self._reads.read_last, subject_filter)

    def read_range(
        self, subject_filter: str | None, start_seq: int, count: int
    ) -> tuple[list[StreamMessage], int]:
        """Up to `count` messages from `start_seq` on, and how many remain after them.

        With a filter only matching messages count. A literal subject is cheap
        to filter on; a wildcard costs the server time in proportion to the
        stream's number of subjects on every request, so the notification log
        reads without a filter (None) and skips other messages itself.
        """
        return self._thread.run(self._reads.read_range, subject_filter, start_seq, count)

    def open_feed(self, subject_filter: str, start_seq: int) -> Feed:
        """Follow the filter with an ordered consumer from `start_seq` (see `Feed`)."""
        return self._thread.run(open_feed, self._connection, subject_filter, start_seq)

    def close_feed(self, feed: Feed) -> None:
        """Stop a feed; its consumer is removed in the background (never blocks)."""
        feed.close()
        self._thread.submit(remove_feed, self._connection, feed)  # nothing once closed
