"""The JetStream connection behind the recorders: one stream, conditional appends, reads.

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
of times. Reads use direct gets (one request returns up to a page of
messages); `subscribe` uses an ordered consumer.

Everything here runs on the datastore's private event-loop thread; the public
methods are synchronous and safe to call from any other thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import nats.errors
import orjson
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    InterfaceError,
    NotSupportedError,
    OperationalError,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from llm_es import errors as llm_errors
from llm_es import headers
from llm_es.eventsourcing_nats._loop import EventLoopThread
from llm_es.eventsourcing_nats._settings import JetStreamSettings
from llm_es.logs import log_kv
from llm_es.store.connection import INITIAL_CONNECT_SECONDS, connect_options
from llm_es.store.log import (
    OutgoingMessage,
    event_log_config,
    request_ack,
    request_atomic_ack,
    require_server_version,
)

logger = logging.getLogger(__name__)

PAGE_SIZE = 1000
"""Messages asked for per direct-get request."""
MAX_APPEND_ATTEMPTS = 4
"""Sends of one append before a conflict that keeps changing is reported as IntegrityError."""
CACHE_SIZE = 10_000
"""Subjects whose last (sequence, position) is remembered."""
FEED_CAPACITY = 1000
"""Messages a subscription buffers before its consumer waits for the reader."""
FEED_HEARTBEAT_SECONDS = 1.0
"""Idle heartbeat of a subscription's ordered consumer."""
CLOSE_SECONDS = 5.0
JS_ERR_STREAM_NAME_IN_USE = 10058
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
class StreamMessage:
    """A stored message as read back: stream sequence, subject, headers, payload."""

    seq: int
    subject: str
    headers: Mapping[str, str]
    data: bytes

    @property
    def position(self) -> int:
        """The message's `Es-Position` (originator version, or tracked notification id)."""
        try:
            return int(self.headers[headers.ES_POSITION])
        except (KeyError, ValueError):
            raise DataError(
                f"message {self.seq} on {self.subject} has no {headers.ES_POSITION} header"
            ) from None

    @property
    def topic(self) -> str:
        """The message's `Es-Topic` ('' when it has none)."""
        return self.headers.get(headers.ES_TOPIC, "")


@dataclasses.dataclass(frozen=True, slots=True)
class _Last:
    """A subject's last message as known: sequence (0: none) and position (None: none)."""

    seq: int
    position: int | None

    def covers(self, position: int) -> bool:
        """True when a message at `position` would not be above this last one."""
        return self.position is not None and position <= self.position


_EMPTY = _Last(0, None)


class JetStreamDatastore:
    """One NATS connection, on a private event-loop thread, to one stream."""

    def __init__(self, settings: JetStreamSettings) -> None:
        self.settings = settings
        self._thread = EventLoopThread(name=f"jetstream-{settings.stream}")
        self._core = _Core(self._thread, settings)
        # The loop thread and its callbacks never refer to `self`, so a datastore
        # nobody closed is still closed once the last recorder using it is gone.
        self._finalizer = weakref.finalize(self, self._core.close)
        self._stream_ready = False
        self._stream_lock = threading.Lock()
        try:
            self._thread.run(self._core.connect)
        except BaseException:
            self.close()
            raise

    @property
    def stream(self) -> str:
        """The stream's name."""
        return self.settings.stream

    @property
    def prefix(self) -> str:
        """The subject prefix; the stream holds `<prefix>.>`."""
        return self.settings.subject_prefix

    @property
    def closed(self) -> bool:
        """True once `close()` was called (or the datastore was collected)."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Close the connection and stop the loop thread (idempotent)."""
        self._finalizer()

    def ensure_stream(self) -> None:
        """Create the stream, or make an existing one fit (subjects, atomic, direct); once."""
        with self._stream_lock:
            if not self._stream_ready:
                self._thread.run(self._core.ensure_stream)
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
        return self._thread.run(self._core.append, appends)

    def read_subject(self, subject: str) -> list[StreamMessage]:
        """Every message on one literal subject, in stream order."""
        return self._thread.run(self._core.read_subject, subject)

    def read_last(self, subject_filter: str) -> StreamMessage | None:
        """The last message matching a subject filter, or None.

        Fast for a literal subject and for `>` (the whole stream); a partial
        wildcard costs the server time in proportion to the number of subjects.
        """
        return self._thread.run(self._core.read_last, subject_filter)

    def read_range(
        self, subject_filter: str | None, start_seq: int, count: int
    ) -> tuple[list[StreamMessage], int]:
        """Up to `count` messages from `start_seq` on, and how many remain after them.

        With a filter only matching messages count. A literal subject is cheap
        to filter on; a wildcard costs the server time in proportion to the
        stream's number of subjects on every request, so the notification log
        reads without a filter (None) and skips other messages itself.
        """
        return self._thread.run(self._core.read_range, subject_filter, start_seq, count)

    def open_feed(self, subject_filter: str, start_seq: int) -> Feed:
        """Follow the filter with an ordered consumer from `start_seq` (see `Feed`)."""
        return self._thread.run(self._core.open_feed, subject_filter, start_seq)

    def close_feed(self, feed: Feed) -> None:
        """Stop a feed; its consumer is removed in the background (never blocks)."""
        feed.close()
        if not self.closed:
            self._thread.submit(self._core.remove_feed, feed)


class Feed:
    """Messages an ordered consumer delivered, for one reading thread.

    The consumer callback runs on the loop and waits for a credit per message,
    so at most `FEED_CAPACITY` messages wait here; JetStream's flow control
    holds the rest on the server until the reader catches up.
    """

    def __init__(self, thread: EventLoopThread) -> None:
        self._thread = thread
        self._items: collections.deque[StreamMessage] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._credits = asyncio.Semaphore(FEED_CAPACITY)
        self.subscription: JetStreamContext.PushSubscription | None = None

    async def deliver(self, msg: Msg) -> None:
        """Consumer callback (on the loop): queue one message for the reader."""
        await self._credits.acquire()
        item = StreamMessage(
            seq=msg.metadata.sequence.stream,
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


class _Core:
    """The datastore's state on the loop thread; refers to nothing that refers to the datastore."""

    def __init__(self, thread: EventLoopThread, settings: JetStreamSettings) -> None:
        self.thread = thread
        self.settings = settings
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.mux: _DirectGetMux | None = None
        self.feeds: set[Feed] = set()
        self.cache: collections.OrderedDict[str, _Last] = collections.OrderedDict()
        self.closing = False

    # -- lifecycle -----------------------------------------------------------

    async def connect(self) -> None:
        settings = self.settings
        options = await connect_options(
            settings.nats_config(), None, name=f"eventsourcing-{settings.stream}"
        )
        # A deliberate close is not worth the plugin's disconnect warning.
        options["disconnected_cb"] = self._disconnected
        try:
            async with asyncio.timeout(INITIAL_CONNECT_SECONDS):
                nc = await nats.connect(**options)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise OperationalError(
                f"cannot connect to NATS at {settings.redacted_url}: {type(exc).__name__}"
            ) from None
        # Connected once: from now on reconnect for as long as the datastore lives.
        nc.options["max_reconnect_attempts"] = -1
        self.nc = nc
        try:
            require_server_version(nc)
        except llm_errors.ServerVersionError as exc:
            await nc.close()
            raise NotSupportedError(str(exc)) from None
        self.js = nc.jetstream()
        mux = _DirectGetMux(nc.new_inbox())
        await nc.subscribe(f"{mux.prefix}.*", cb=mux.deliver)
        self.mux = mux

    async def _disconnected(self) -> None:
        if not self.closing:
            log_kv(
                logger, "jetstream_disconnected", level=logging.WARNING, stream=self.settings.stream
            )

    def close(self) -> None:
        """Close the connection and stop the loop (any thread; idempotent)."""
        if self.thread.stopping:
            return
        if self.thread.in_loop_thread():
            # Collected on the loop itself: finish there, nobody can wait.
            self.thread.loop.create_task(self._close_then_stop())
            return
        with contextlib.suppress(InterfaceError):
            self.thread.run(self._close_connection)
        self.thread.stop()

    async def _close_then_stop(self) -> None:
        await self._close_connection()
        self.thread.stop()

    async def _close_connection(self) -> None:
        self.closing = True
        for feed in list(self.feeds):
            feed.fail(InterfaceError("the JetStream datastore was closed"))
        self.feeds.clear()
        nc, self.nc = self.nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await nc.close()

    def _client(self) -> tuple[NATS, JetStreamContext, _DirectGetMux]:
        if self.nc is None or self.js is None or self.mux is None:
            raise InterfaceError("the JetStream datastore is closed")
        return self.nc, self.js, self.mux

    # -- stream --------------------------------------------------------------

    def stream_config(self) -> api.StreamConfig:
        settings = self.settings
        storage = api.StorageType.MEMORY if settings.storage == "memory" else api.StorageType.FILE
        return event_log_config(
            settings.stream, settings.subject_prefix, replicas=settings.replicas, storage=storage
        )

    async def ensure_stream(self) -> None:
        _, js, _ = self._client()
        stream = self.settings.stream
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            try:
                await js.add_stream(self.stream_config())
                return
            except APIError as exc:
                if exc.err_code != JS_ERR_STREAM_NAME_IN_USE:  # created meanwhile: fit it below
                    raise OperationalError(f"cannot create stream {stream}: {exc}") from None
            info = await js.stream_info(stream)
        except APIError as exc:
            raise OperationalError(f"cannot read stream {stream}: {exc}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise OperationalError(f"cannot read stream {stream}: {type(exc).__name__}") from None
        config = info.config
        wanted = f"{self.settings.subject_prefix}.>"
        subjects = list(config.subjects or [])
        if wanted in subjects and config.allow_atomic and config.allow_direct:
            return
        if wanted not in subjects:
            subjects.append(wanted)
        fitted = dataclasses.replace(
            config, subjects=subjects, allow_atomic=True, allow_direct=True
        )
        try:
            await js.update_stream(fitted)
        except APIError as exc:
            raise OperationalError(f"cannot update stream {stream}: {exc}") from None

    # -- appends -------------------------------------------------------------

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
            known = {subject: self.cache.get(subject, _EMPTY) for subject in subjects}
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
                f"stream {self.settings.stream} refused the append: {description}"
            )
        raise IntegrityError(
            f"append to {', '.join(subjects)} kept conflicting after {MAX_APPEND_ATTEMPTS} tries"
        )

    async def _send(self, appends: Sequence[Append], known: Mapping[str, _Last]) -> dict[str, Any]:
        nc, _, _ = self._client()
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
        wait = self.settings.request_timeout
        stream = self.settings.stream
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
            raise OperationalError(
                f"append to {self.settings.stream} failed: {type(exc).__name__}"
            ) from None

    def _accepted(self, appends: Sequence[Append], ack: Mapping[str, Any]) -> list[int]:
        last_seq = int(ack["seq"])
        first_seq = last_seq - len(appends) + 1
        sequences = list(range(first_seq, last_seq + 1))
        for seq, item in zip(sequences, appends, strict=True):
            self._remember(item.subject, _Last(seq, item.position))
        return sequences

    async def _refresh(self, subjects: Sequence[str]) -> None:
        lasts = await asyncio.gather(*(self.read_last(subject) for subject in subjects))
        for subject, message in zip(subjects, lasts, strict=True):
            last = _EMPTY if message is None else _Last(message.seq, message.position)
            self._remember(subject, last, force=True)

    def _remember(self, subject: str, last: _Last, *, force: bool = False) -> None:
        cached = self.cache.get(subject)
        if force or cached is None or last.seq > cached.seq:
            self.cache[subject] = last
        self.cache.move_to_end(subject)
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)

    # -- reads ---------------------------------------------------------------

    async def read_last(self, subject_filter: str) -> StreamMessage | None:
        reply = await self._direct_get({"last_by_subj": subject_filter}, batch=False)
        return reply.messages[0] if reply.messages else None

    async def read_range(
        self, subject_filter: str | None, start_seq: int, count: int
    ) -> tuple[list[StreamMessage], int]:
        request: dict[str, object] = {"seq": max(start_seq, 1), "batch": count}
        if subject_filter is not None:
            request["next_by_subj"] = subject_filter
        reply = await self._direct_get(request, batch=True)
        return reply.messages, reply.pending

    async def read_subject(self, subject: str) -> list[StreamMessage]:
        messages: list[StreamMessage] = []
        start = 1
        while True:  # each page moves `start` past what it returned
            page, pending = await self.read_range(subject, start, PAGE_SIZE)
            messages.extend(page)
            if not page or pending == 0:
                break
            start = page[-1].seq + 1
        if messages:
            last = messages[-1]
            self._remember(subject, _Last(last.seq, last.position))
        else:
            self._remember(subject, _EMPTY, force=True)
        return messages

    async def _direct_get(self, request: Mapping[str, object], *, batch: bool) -> _Reply:
        nc, _, mux = self._client()
        token, reply = mux.expect(batch=batch)
        stream = self.settings.stream
        wait = self.settings.request_timeout
        try:
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=f"{mux.prefix}.{token}"
            )
            async with asyncio.timeout(wait):
                await reply.done
        except TimeoutError:
            raise OperationalError(
                f"stream {stream} did not answer a read within {wait}s"
            ) from None
        except nats.errors.Error as exc:
            raise OperationalError(f"read from {stream} failed: {type(exc).__name__}") from None
        finally:
            mux.forget(token)
        if reply.error is not None:
            raise OperationalError(f"read from {stream} failed: {reply.error}")
        return reply

    # -- subscriptions -------------------------------------------------------

    async def open_feed(self, subject_filter: str, start_seq: int) -> Feed:
        _, js, _ = self._client()
        feed = Feed(self.thread)
        try:
            feed.subscription = await js.subscribe(
                subject_filter,
                stream=self.settings.stream,
                ordered_consumer=True,
                # A consumer lost with a server restart is recreated after two
                # missed heartbeats: 2 s instead of nats-py's default 10.
                idle_heartbeat=FEED_HEARTBEAT_SECONDS,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                config=api.ConsumerConfig(opt_start_seq=max(start_seq, 1)),
                cb=feed.deliver,
                manual_ack=True,
            )
        except (TimeoutError, nats.errors.Error) as exc:
            raise OperationalError(
                f"cannot follow stream {self.settings.stream}: {type(exc).__name__}"
            ) from None
        self.feeds.add(feed)
        return feed

    async def remove_feed(self, feed: Feed) -> None:
        self.feeds.discard(feed)
        subscription, feed.subscription = feed.subscription, None
        if subscription is not None and self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await subscription.unsubscribe()


class _Reply:
    """What one direct-get request received."""

    def __init__(self, done: asyncio.Future[None], *, batch: bool) -> None:
        self.done = done
        self.batch = batch
        self.messages: list[StreamMessage] = []
        self.pending = 0
        self.error: str | None = None

    def add(self, msg: Msg) -> None:
        if self.done.done():
            return
        msg_headers = msg.headers or {}
        status = msg_headers.get(headers.STATUS)
        if status is None:
            self.messages.append(
                StreamMessage(
                    seq=int(msg_headers[headers.NATS_SEQUENCE]),
                    subject=msg_headers[headers.NATS_SUBJECT],
                    headers=msg_headers,
                    data=msg.data,
                )
            )
            if not self.batch:
                self.done.set_result(None)
            return
        if status == "204":  # end of a batch
            self.pending = int(msg_headers.get(headers.NATS_NUM_PENDING, "0"))
        elif status != "404":  # 404: nothing matches
            self.error = f"{status} {msg_headers.get('Description', '')}".strip()
        self.done.set_result(None)


class _DirectGetMux:
    """One wildcard inbox subscription that routes direct-get replies to their requests."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._waiting: dict[str, _Reply] = {}
        self._next = 0

    def expect(self, *, batch: bool) -> tuple[str, _Reply]:
        self._next += 1
        token = str(self._next)
        reply = _Reply(asyncio.get_running_loop().create_future(), batch=batch)
        self._waiting[token] = reply
        return token, reply

    def forget(self, token: str) -> None:
        self._waiting.pop(token, None)

    async def deliver(self, msg: Msg) -> None:
        reply = self._waiting.get(msg.subject.rpartition(".")[2])
        if reply is not None:
            reply.add(msg)
