"""Observability events `rosey.event.llm.*`, derived from the event log by one active publisher.

Nothing here is called by a request handler: the publisher follows `llm.ev.>`
(through the views' fold in the plugin, else with an ordered consumer of its
own) and maps what was recorded to the seed's events
(`llm_es.domain.observations.ObservationFold`, pure), so the events say what the log says and can be
derived again from any position (`EventPublisher.republish`).

One instance publishes at a time. It holds a lease (key `event-publisher` of
KV bucket `llm_leases`, whose `max_age` is the lease TTL: a holder that stops
renewing loses it) and stores the last log sequence it published (key
`position` of bucket `llm_publisher`, written with the revision it last wrote,
so a deposed holder cannot move it). A new holder folds a bounded stretch of
the log before that position without publishing (the last hour and the UTC day
before it, for the usage thresholds) and publishes from the event after it.

- Clean handover (`stop()`): publishing stops between two log events, the
  position is stored, then the lease is released: nothing is published twice
  and nothing is lost.
- Crash: the lease expires after its TTL; the next holder publishes again the
  events after the last stored position (stored at least every
  `POSITION_SAVE_EVENTS` events or `POSITION_SAVE_SECONDS`, and when the log
  goes quiet; not per event, which would add a KV write to every turn).
  Consumers can drop repeats by the `Llm-Seq` or `Nats-Msg-Id` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    KeyNotFoundError,
    KeyValueError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from llm_es.config import Config
from llm_es.domain.events import Event
from llm_es.domain.observations import Observation, ObservationFold, fold_window_start, iso_utc
from llm_es.domain.views import EventFeed
from llm_es.errors import OperationalError
from llm_es.logs import log_kv
from llm_es.store.codec import UnknownEventError, decode_event
from llm_es.store.kv import ensure_bucket
from llm_es.store.lease import KvLease, keep_single_active, open_lease
from llm_es.store.liveness import new_instance_id
from llm_es.store.log import EventStore
from llm_es.tasks import finish_task

logger = logging.getLogger("llm_es.service.event_publisher")

LEASE_KEY = "event-publisher"
POSITION_BUCKET = "llm_publisher"
POSITION_KEY = "position"

DEFAULT_LEASE_TTL_SECONDS = 10.0
IDLE_POLL_SECONDS = 0.2
"""Longest the publisher waits for a log event before it checks the lease and the stop flag."""
CONSUMER_HEARTBEAT_SECONDS = 1.0
DERIVE_BUFFER = 4096
"""Log events read ahead of the publisher at most."""
FEED_BUFFER = 65_536
"""Events the views may hand on ahead of the publisher before it reads the log instead."""
REPLAY_CHECK_EVERY = 1024
"""While folding without publishing, the publisher checks for stop and lease this often."""
POSITION_SAVE_EVENTS = 256
POSITION_SAVE_SECONDS = 1.0
STOP_GRACE_SECONDS = 10.0
REPUBLISH_IDLE_LIMIT = 50
"""Idle polls in a row after which a republish gives up (the events it expects never came)."""


# ---------------------------------------------------------------- position


async def ensure_position_bucket(js: JetStreamContext) -> KeyValue:
    """The bucket holding the publisher's position (no TTL: it must outlive every instance)."""
    return await ensure_bucket(
        js,
        api.KeyValueConfig(
            bucket=POSITION_BUCKET,
            history=1,
            storage=api.StorageType.FILE,
            direct=True,
            description="llm-es: last log sequence published on rosey.event.llm.*",
        ),
    )


# ---------------------------------------------------------------- publisher


class _FenceLost(Exception):
    """Another instance wrote the position: this one is no longer the publisher."""


@dataclass(frozen=True, slots=True)
class _Step:
    """One log event read: past the starting position, with what it produces."""

    seq: int
    observations: list[Observation]
    replayed: bool = False
    """Folded without publishing (at or before the starting position): a chance to stop."""


@dataclass(slots=True)
class _Cursor:
    """The last log sequence folded by one derivation, wherever the events came from."""

    last: int

    def fold(
        self, fold: ObservationFold, seq: int, event: Event | None, after: int
    ) -> _Step | None:
        """Fold the event after `last`: its step past `after`, now and then one before."""
        self.last = seq
        observations = [] if event is None else fold.apply(seq, event)
        if seq > after:
            return _Step(seq, observations)
        if seq % REPLAY_CHECK_EVERY == 0:
            return _Step(seq, [], replayed=True)
        return None


class _Following:
    """The views' events (`EventFeed`) buffered for one derivation.

    The views hand each event on synchronously while folding, so the buffer
    cannot push back: past `FEED_BUFFER` waiting events it stops following
    and marks itself overflowed, and the derivation reads the log instead.
    """

    def __init__(self, feed: EventFeed) -> None:
        self._events: deque[tuple[int, Event | None]] = deque()
        self._ready = asyncio.Event()
        self.overflowed = False
        self.start, self._stop = feed.follow(self._listen)

    def _listen(self, seq: int, event: Event | None) -> None:
        if self.overflowed:
            return
        if len(self._events) >= FEED_BUFFER:
            self.overflowed = True
            self._stop()
        else:
            self._events.append((seq, event))
        self._ready.set()

    def take(self) -> tuple[int, Event | None] | None:
        return self._events.popleft() if self._events else None

    async def wait(self) -> None:
        """Until an event is buffered or the feed overflowed (callers bound the wait)."""
        if self._events or self.overflowed:
            return
        self._ready.clear()
        await self._ready.wait()

    def close(self) -> None:
        self._stop()


async def _read_feed(
    fold: ObservationFold, cursor: _Cursor, after: int, following: _Following
) -> AsyncGenerator[_Step | None, None]:
    """`_derive`'s steps from the views' feed, until it overflows (None when idle a while)."""
    while True:
        taken = following.take()
        if taken is None:
            if following.overflowed:
                return
            try:
                async with asyncio.timeout(IDLE_POLL_SECONDS):
                    await following.wait()
            except TimeoutError:
                yield None
            continue
        seq, event = taken
        if seq <= cursor.last:
            continue  # already read from the log
        step = cursor.fold(fold, seq, event, after)
        if step is not None:
            yield step


class EventPublisher:
    """Publishes `rosey.event.llm.*` from the log while it holds the publisher lease.

    Start one per plugin instance; at most one of them publishes at a time, the
    others stand by and take over when it stops or dies. With no stored
    position (the first start ever), publishing starts at the log's end, or at
    its first event with `from_beginning=True`. With `feed` (the plugin's
    views), the leader takes the events the views fold instead of following
    the log itself (see `EventFeed`).
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        store: EventStore,
        config: Config,
        *,
        instance_id: str | None = None,
        lease_ttl_seconds: float = DEFAULT_LEASE_TTL_SECONDS,
        from_beginning: bool = False,
        feed: EventFeed | None = None,
    ) -> None:
        self._nc = nc
        self._feed = feed
        self._js = js
        self._store = store
        self._config = config
        self.instance_id = instance_id or new_instance_id()
        self._lease_ttl = lease_ttl_seconds
        self._from_beginning = from_beginning
        self._first_position = 0
        """Where publishing starts if no instance ever published: the log's end at start."""
        self._lease: KvLease | None = None
        self._positions: KeyValue | None = None
        self._position_revision = 0
        self._published = 0
        self._saved = 0
        self._last_save = 0.0
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._leading = False

    @property
    def position(self) -> int:
        """Last log sequence whose events this instance published (0 before it led)."""
        return self._published

    @property
    def is_leader(self) -> bool:
        """Whether this instance holds the lease and has claimed the position: every log
        event appended from now on will be published (by it, or by its successor)."""
        return self._leading and self._lease is not None and self._lease.held()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the buckets and start competing for the lease (returns at once)."""
        self._lease = await open_lease(self._js, LEASE_KEY, self.instance_id, self._lease_ttl)
        ttl = self._lease.ttl_seconds
        self._positions = await ensure_position_bucket(self._js)
        # Taken now, not when the lease is first won: everything appended once the plugin
        # serves (it starts the publisher before its command subjects) is published.
        self._first_position = 0 if self._from_beginning else await self._store.last_seq()
        self._stopping.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name="event-publisher")
        log_kv(logger, "event_publisher_started", instance=self.instance_id, lease_ttl=ttl)

    async def stop(self) -> None:
        """Hand over cleanly: stop between two events, store the position, release the lease."""
        self._stopping.set()
        # The supervisor first (it may be starting a worker), then the worker, which
        # notices the flag between two log events.
        await finish_task(self._supervisor, STOP_GRACE_SECONDS)
        self._supervisor = None
        await finish_task(self._worker, STOP_GRACE_SECONDS)
        await self._step_down()
        log_kv(logger, "event_publisher_stopped", instance=self.instance_id, position=self.position)

    async def stored_position(self) -> int:
        """The position in KV: where the next holder will continue (0 when none)."""
        kv = self._positions or await ensure_position_bucket(self._js)
        try:
            entry = await kv.get(POSITION_KEY)
        except KeyNotFoundError:
            return 0
        return _position_of(entry.value)

    async def republish(self, from_seq: int, to_seq: int | None = None) -> int:
        """Publish again the events derived from log sequences `from_seq`..`to_seq`.

        `to_seq` defaults to the log's end now. Independent of the lease and the
        stored position (an operator's re-derivation, e.g. after consumers lost
        events); returns how many events were published.
        """
        end = await self._store.last_seq()
        if to_seq is not None:
            end = min(end, to_seq)
        from_seq = max(from_seq, 1)
        if end < from_seq:
            return 0
        published = 0
        idle = 0
        async with contextlib.aclosing(self._derive(from_seq - 1, until=end)) as steps:
            async for step in steps:
                if step is None:
                    idle += 1
                    if idle >= REPUBLISH_IDLE_LIMIT:
                        raise OperationalError(f"republish stalled before sequence {end}")
                    continue
                idle = 0
                if step.replayed:
                    continue
                for observation in step.observations:
                    await self._publish(observation)
                    published += 1
        await self._nc.flush()
        log_kv(logger, "events_republished", from_seq=from_seq, to_seq=end, count=published)
        return published

    async def _publish(self, observation: Observation) -> None:
        await self._nc.publish(
            observation.subject, observation.payload(), headers=observation.headers
        )

    # ------------------------------------------------------------ leadership

    async def _supervise(self) -> None:
        assert self._lease is not None
        await keep_single_active(
            self._lease,
            self._stopping,
            holding=lambda: self._worker is not None,
            keep=self._keep_leading,
            take=self._try_to_lead,
            name="event-publisher",
        )

    async def _try_to_lead(self) -> None:
        assert self._lease is not None
        if await self._lease.acquire():
            self._worker = asyncio.create_task(self._lead(), name="event-publishing")

    async def _keep_leading(self) -> None:
        assert self._lease is not None
        if self._worker is None or self._worker.done() or not await self._lease.renew():
            await self._step_down()

    async def _step_down(self) -> None:
        """Stop publishing, store the position, release the lease.

        Storing is safe even when the lease was lost: the write is conditional on
        this holder's last revision, so it fails once another holder claimed it.
        """
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        led = self._position_revision != 0
        if led and self._published > self._saved:
            try:
                await self._save_position()
            except (_FenceLost, KeyValueError, APIError, nats.errors.Error) as exc:
                log_kv(logger, "event_position_not_saved", level=logging.WARNING, error=repr(exc))
        self._position_revision = 0
        if self._lease is not None:
            await self._lease.release()
        if led:
            log_kv(
                logger,
                "event_publisher_standing_by",
                instance=self.instance_id,
                position=self._saved,
            )

    async def _claim_position(self) -> int:
        """Read the stored position and rewrite it as ours: a deposed holder's writes now fail."""
        assert self._positions is not None
        try:
            entry = await self._positions.get(POSITION_KEY)
        except KeyNotFoundError:
            position = self._first_position
            # `create` also replaces a delete marker; it fails if another holder got here first.
            self._position_revision = await self._positions.create(
                POSITION_KEY, self._position_value(position)
            )
        else:
            position = _position_of(entry.value)
            self._position_revision = await self._positions.update(
                POSITION_KEY, self._position_value(position), last=entry.revision
            )
        self._published = self._saved = position
        self._last_save = time.monotonic()
        return position

    def _position_value(self, seq: int) -> bytes:
        return orjson.dumps(
            {"seq": seq, "holder": self.instance_id, "saved_at": iso_utc(datetime.now(UTC))}
        )

    async def _save_position(self) -> None:
        assert self._positions is not None
        target = self._published
        try:
            self._position_revision = await self._positions.update(
                POSITION_KEY, self._position_value(target), last=self._position_revision
            )
        except KeyWrongLastSequenceError as exc:
            raise _FenceLost from exc
        self._saved = target
        self._last_save = time.monotonic()

    def _save_due(self) -> bool:
        return (
            self._published - self._saved >= POSITION_SAVE_EVENTS
            or time.monotonic() - self._last_save >= POSITION_SAVE_SECONDS
        )

    async def _lead(self) -> None:
        """Publish from the stored position while the lease is ours."""
        assert self._lease is not None
        lease = self._lease
        try:
            position = await self._claim_position()
            self._leading = True
            log_kv(logger, "event_publisher_leading", instance=self.instance_id, position=position)
            async with contextlib.aclosing(
                self._derive(position, until=None, feed=self._feed)
            ) as steps:
                async for step in steps:
                    if self._stopping.is_set() or not lease.held():
                        return
                    if step is None:
                        if self._published > self._saved:
                            await self._save_position()
                        continue
                    if step.replayed:
                        continue
                    for observation in step.observations:
                        await self._publish(observation)
                    self._published = step.seq
                    if self._save_due():
                        await self._save_position()
        except _FenceLost:
            log_kv(
                logger, "event_publisher_deposed", level=logging.WARNING, instance=self.instance_id
            )
        except (KeyWrongLastSequenceError, KeyValueError, APIError, nats.errors.Error) as exc:
            log_kv(logger, "event_publisher_failed", level=logging.WARNING, error=repr(exc))
        except Exception:  # e.g. an unreadable stored position: logged in full, lease released
            logger.exception("event_publisher_crashed instance=%s", self.instance_id)
        finally:
            self._leading = False

    # ------------------------------------------------------------ reading the log

    async def _derive(
        self, after: int, *, until: int | None, feed: EventFeed | None = None
    ) -> AsyncGenerator[_Step | None, None]:
        """Steps for the log events after `after` (up to `until`), None when idle a while.

        The fold starts early enough (`fold_window_start`) that its thresholds
        are exact; events up to `after` are folded without being yielded. With
        `feed` (and no `until`), the log is read only up to where the feed
        starts, then the events come from the feed; if the feed overflows (this
        publisher fell behind), the log is read again from where it stopped.
        """
        fold = ObservationFold(self._config.rate_limits)
        cursor = _Cursor(await self._fold_start(after) - 1)
        # Bounded like the publisher's life: each round ends only on an overflow.
        while True:
            following = _Following(feed) if feed is not None and until is None else None
            try:
                end = until if following is None else following.start
                if end is None or cursor.last < end:
                    async with contextlib.aclosing(
                        self._read_log(fold, cursor, after, until=end)
                    ) as steps:
                        async for step in steps:
                            yield step
                if following is None:
                    return
                async with contextlib.aclosing(_read_feed(fold, cursor, after, following)) as steps:
                    async for step in steps:
                        yield step
                log_kv(logger, "event_feed_overflowed", level=logging.WARNING, seq=cursor.last)
            finally:
                if following is not None:
                    following.close()

    async def _read_log(
        self, fold: ObservationFold, cursor: _Cursor, after: int, *, until: int | None
    ) -> AsyncGenerator[_Step | None, None]:
        """`_derive`'s steps read from the log with an ordered consumer of this publisher."""
        # A bounded hand-off queue: a full one holds the subscription's callback, so
        # flow control stops the server instead of memory growing. Taking ready
        # messages without awaiting is several times faster than `next_msg`.
        arrived: asyncio.Queue[Msg] = asyncio.Queue(maxsize=DERIVE_BUFFER)
        sub = await self._js.subscribe(
            f"{self._store.prefix}.>",
            stream=self._store.stream,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=cursor.last + 1),
            cb=arrived.put,
            manual_ack=True,
            idle_heartbeat=CONSUMER_HEARTBEAT_SECONDS,
        )
        try:
            while True:
                try:
                    msg = arrived.get_nowait()
                except asyncio.QueueEmpty:
                    try:
                        async with asyncio.timeout(IDLE_POLL_SECONDS):
                            msg = await arrived.get()
                    except TimeoutError:
                        yield None
                        continue
                seq = msg.metadata.sequence.stream
                if seq <= cursor.last:
                    continue  # redelivered after an ordered-consumer reset
                if until is not None and seq > until:
                    return
                event: Event | None = None
                try:
                    event = decode_event(msg.data)
                except UnknownEventError as exc:
                    log_kv(logger, "event_skipped", level=logging.ERROR, seq=seq, error=str(exc))
                step = cursor.fold(fold, seq, event, after)
                if step is not None:
                    yield step
                if until is not None and seq >= until:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _fold_start(self, after: int) -> int:
        """First log sequence to fold so the events after `after` come out exact."""
        if after <= 0:
            return 1
        moment = await self._event_time(after)
        if moment is None:
            return 1
        start = fold_window_start(moment)
        info = await self._js.stream_info(self._store.stream)
        low, high = max(info.state.first_seq, 1), after + 1
        # Binary search on event time (nearly sorted; the skew margin absorbs the rest).
        for _ in range(64):
            if low >= high:
                break
            middle = (low + high) // 2
            at = await self._event_time(middle)
            if at is None or at < start:
                low = middle + 1
            else:
                high = middle
        return low

    async def _event_time(self, seq: int) -> datetime | None:
        try:
            msg = await self._js.get_msg(self._store.stream, seq=seq, direct=True)
        except NotFoundError:
            return None
        if msg.data is None:
            return None
        try:
            return decode_event(msg.data).at
        except UnknownEventError:
            return None


def _position_of(raw: bytes | None) -> int:
    """The sequence in a stored position value; an unreadable value stops the publisher."""
    try:
        value = orjson.loads(raw or b"")
        seq = value["seq"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise OperationalError(f"unreadable event publisher position: {exc}") from None
    if type(seq) is not int or seq < 0:
        raise OperationalError(f"unreadable event publisher position: seq {seq!r}")
    return seq
