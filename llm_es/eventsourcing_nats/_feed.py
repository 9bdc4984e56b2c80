"""Following the stream: an ordered consumer's messages handed to one reading thread.

The consumer callback runs on the loop and waits for a credit per message,
so at most `FEED_CAPACITY` messages wait in a feed; JetStream's flow control
holds the rest on the server until the reader catches up.
"""

from __future__ import annotations

import asyncio
import collections
import threading

import nats.errors
from eventsourcing.persistence import OperationalError
from nats.aio.msg import Msg

from llm_es.eventsourcing_nats._connection import Connection
from llm_es.eventsourcing_nats._loop import EventLoopThread
from llm_es.eventsourcing_nats._reads import StreamMessage
from llm_es.store.follow import Following, follow

FEED_CAPACITY = 1000
"""Messages a subscription buffers before its consumer waits for the reader."""
FEED_HEARTBEAT_SECONDS = 1.0
"""Idle heartbeat of a subscription's ordered consumer."""


class Feed:
    """Messages an ordered consumer delivered, for one reading thread."""

    def __init__(self, thread: EventLoopThread) -> None:
        self._thread = thread
        self._items: collections.deque[StreamMessage] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._credits = asyncio.Semaphore(FEED_CAPACITY)
        self.following: Following | None = None

    async def deliver(self, seq: int, pending: int, stored_ns: int, msg: Msg) -> None:
        """Consumer callback (on the loop): queue one message for the reader."""
        await self._credits.acquire()
        item = StreamMessage(
            seq=seq,
            subject=msg.subject,
            headers=msg.headers or {},
            data=msg.data,
        )
        with self._condition:
            self._items.append(item)
            self._condition.notify()

    def take(self) -> StreamMessage | None:
        """Block until a message comes (returned), or the feed is closed (None).

        Raises the error the feed failed with, e.g. InterfaceError when the
        datastore was closed under it.
        """
        with self._condition:
            while not self._items and not self._closed and self._error is None:
                self._condition.wait()
            if self._closed:
                return None
            if self._error is not None:
                raise self._error
            item = self._items.popleft()
        self._thread.call_soon(self._credits.release)
        return item

    def close(self) -> None:
        """Wake the reader; `take` returns None from now on."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def fail(self, error: BaseException) -> None:
        """Wake the reader with an error (unless the feed is already closed)."""
        with self._condition:
            self._error = error
            self._condition.notify_all()


async def open_feed(connection: Connection, subject_filter: str, start_seq: int) -> Feed:
    """A feed of the messages matching the filter, from `start_seq` on."""
    js = connection.client().jetstream()
    feed = Feed(connection.thread)
    try:
        # A consumer lost with a server restart is recreated after two missed
        # heartbeats: 2 s instead of nats-py's default 10.
        feed.following = await follow(
            js,
            connection.settings.stream,
            subject_filter,
            feed.deliver,
            after=max(start_seq, 1) - 1,
            heartbeat_seconds=FEED_HEARTBEAT_SECONDS,
        )
    except (TimeoutError, nats.errors.Error) as exc:
        raise OperationalError(
            f"cannot follow stream {connection.settings.stream}: {type(exc).__name__}"
        ) from None
    connection.feeds.add(feed)
    return feed


async def remove_feed(connection: Connection, feed: Feed) -> None:
    """Remove the feed's consumer (the feed itself is closed already)."""
    connection.feeds.discard(feed)
    following, feed.following = feed.following, None
    if following is not None and connection.is_open():
        await following.stop()
