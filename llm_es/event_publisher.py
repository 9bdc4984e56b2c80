"""Observability events `rosey.event.llm.*`, derived from the event log by one active publisher.

Nothing here is called by a request handler: the publisher follows `llm.ev.>`
(through the views' fold in the plugin, else with an ordered consumer of its
own) and maps what was recorded to the seed's events
(`ObservationFold`, pure), so the events say what the log says and can be
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
  Consumers can drop repeats by `seq`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyValueError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from llm_es.codec import UnknownEventError, decode_event
from llm_es.config import Config, RateLimitsConfig
from llm_es.dispatch import finish_task
from llm_es.errors import OperationalError
from llm_es.events import (
    ContextSummarized,
    Event,
    MemoryAdded,
    MemoryForgotten,
    MemoryRecalled,
    TokensSpent,
    TurnAdmitted,
    TurnCompleted,
    TurnFailed,
    TurnRejected,
)
from llm_es.lease import KvLease, open_lease
from llm_es.limits import day_of
from llm_es.liveness import new_instance_id
from llm_es.logs import log_kv
from llm_es.store import EventStore
from llm_es.views import EventFeed

logger = logging.getLogger("llm_es.event_publisher")

EVENT_SUBJECT_PREFIX = "rosey.event.llm"
RESPONSE_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.response"
ERROR_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.error"
MEMORY_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.memory"
SUMMARIZED_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.summarized"
USAGE_THRESHOLD_SUBJECT = f"{EVENT_SUBJECT_PREFIX}.usage_threshold"

MEMORY_ACTIONS = {MemoryAdded: "add", MemoryRecalled: "recall", MemoryForgotten: "forget"}
"""`action` of a memory event: the seed's `LLMMemoryEvent` words (add, recall), plus forget."""

THRESHOLD_NUMERATOR, THRESHOLD_DENOMINATOR = 4, 5
"""A usage threshold event fires at 80% of a limit (integer arithmetic: no rounding surprises)."""

LEASE_KEY = "event-publisher"
POSITION_BUCKET = "llm_publisher"
POSITION_KEY = "position"

DEFAULT_LEASE_TTL_SECONDS = 10.0
RENEWALS_PER_TTL = 4
MAX_POLL_SECONDS = 1.0
"""A standby tries to take the lease at least this often."""

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

CLOCK_SKEW_MARGIN = timedelta(minutes=5)
"""Writers' clocks may disagree this much; folds start this much earlier to stay exact."""
MAX_TRACKED_TURNS = 10_000
MAX_TRACKED_USERS = 100_000
_USER_IDLE_SECONDS = 86_400 + CLOCK_SKEW_MARGIN.total_seconds()
"""A user silent this long has no usage left in any window: forgetting them changes nothing."""


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with `Z`, the `timestamp` of every published event."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def fold_window_start(moment: datetime) -> datetime:
    """Earliest event time that can affect usage thresholds at `moment` or later.

    Thresholds look at the sliding hour (and the clock hour it started in) and
    the UTC day, so a fold from here is exact; the margin covers clock skew.
    """
    utc = moment.astimezone(UTC)
    day_start = datetime(utc.year, utc.month, utc.day, tzinfo=UTC)
    hour_start = utc.replace(minute=0, second=0, microsecond=0)
    return min(day_start, hour_start - timedelta(hours=1)) - CLOCK_SKEW_MARGIN


@dataclass(frozen=True, slots=True)
class Observation:
    """One event to publish: its subject, its JSON body, and the log sequence it derives from."""

    seq: int
    subject: str
    body: dict[str, Any]

    def payload(self) -> bytes:
        return orjson.dumps(self.body)


@dataclass(slots=True)
class _TurnInfo:
    """What the log said about a turn before it ended (bounded map, see MAX_TRACKED_TURNS)."""

    provider: str | None = None
    persona: str | None = None
    purpose: str | None = None
    source: str | None = None
    message_length: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(slots=True)
class _UserUsage:
    """A user's usage as the thresholds need it: sliding request times, day counters, marks."""

    day: str
    last_seen: float
    recent: deque[float]
    requests_today: int = 0
    tokens_today: int = 0
    fired: dict[str, int | str] = field(default_factory=dict)
    """threshold type -> the window it last fired in (clock minute/hour number, or UTC day)."""


class ObservationFold:
    """Pure: log events in stream order -> the observability events they produce.

    `usage_threshold` fires when a count reaches 80% of a configured limit, at
    most once per window: the clock minute or clock hour the crossing falls in
    (counts themselves slide over the last 60 s / 3600 s, as admission does),
    or the UTC day for `day` requests and `tokens` (tokens spent, as settled by
    `TokensSpent`). Every decision depends only on the events of the hour and
    day before it, so folding from `fold_window_start` gives the same events as
    folding the whole log.
    """

    def __init__(self, limits: RateLimitsConfig) -> None:
        self._limits = limits
        windows = (limits.requests_per_minute, limits.requests_per_hour)
        self._keep = max((w for w in windows if w is not None), default=0)
        self._turns: OrderedDict[str, _TurnInfo] = OrderedDict()
        self._users: OrderedDict[str, _UserUsage] = OrderedDict()

    def apply(self, seq: int, event: Event) -> list[Observation]:
        """The events `event` (stream sequence `seq`) produces; updates the fold."""
        if isinstance(event, TurnAdmitted):
            return self._admitted(seq, event)
        if isinstance(event, TokensSpent):
            return self._spent(seq, event)
        if isinstance(event, TurnCompleted):
            return [self._response(seq, event)]
        if isinstance(event, TurnFailed):
            return [self._failed(seq, event)]
        if isinstance(event, TurnRejected):
            return [self._rejected(seq, event)]
        if isinstance(event, MemoryAdded | MemoryRecalled | MemoryForgotten):
            return [self._memory(seq, event)]
        if isinstance(event, ContextSummarized):
            return [
                Observation(
                    seq,
                    SUMMARIZED_SUBJECT,
                    {
                        "channel": event.channel,
                        "message_count": event.message_count,
                        "summary_length": len(event.summary),
                        "through_seq": event.through_seq,
                        "timestamp": iso_utc(event.at),
                        "seq": seq,
                    },
                )
            ]
        return []

    # ------------------------------------------------------------ turns

    def _turn(self, turn_id: str) -> _TurnInfo:
        info = self._turns.get(turn_id)
        if info is None:
            info = self._turns[turn_id] = _TurnInfo()
            while len(self._turns) > MAX_TRACKED_TURNS:
                self._turns.popitem(last=False)
        return info

    def _admitted(self, seq: int, event: TurnAdmitted) -> list[Observation]:
        info = self._turn(event.turn_id)
        info.provider = event.provider
        info.persona = event.persona or None
        info.purpose = event.purpose
        info.source = event.source
        info.message_length = len(event.message)
        if event.user is None:
            return []
        usage = self._usage_of(event.user, event.at)
        moment = event.at.timestamp()
        if self._keep:
            usage.recent.append(moment)
        usage.requests_today += 1
        limits = self._limits
        crossings: list[Observation] = []
        for kind, limit, window_seconds in (
            ("minute", limits.requests_per_minute, 60),
            ("hour", limits.requests_per_hour, 3600),
        ):
            if limit is None:
                continue
            count = sum(1 for t in usage.recent if t > moment - window_seconds)
            window_start = int(moment // window_seconds) * window_seconds
            crossings += self._crossing(
                seq,
                event,
                usage,
                kind,
                limit,
                count,
                window=window_start,
                window_start=datetime.fromtimestamp(window_start, UTC),
            )
        if limits.requests_per_day is not None:
            crossings += self._crossing(
                seq,
                event,
                usage,
                "day",
                limits.requests_per_day,
                usage.requests_today,
                window=usage.day,
                window_start=datetime.fromisoformat(usage.day).replace(tzinfo=UTC),
            )
        return crossings

    def _spent(self, seq: int, event: TokensSpent) -> list[Observation]:
        if event.purpose != "context_summary":
            info = self._turn(event.turn_id)
            info.prompt_tokens = event.prompt_tokens
            info.completion_tokens = event.completion_tokens
            info.purpose = info.purpose or event.purpose
        if event.user is None:
            return []
        usage = self._usage_of(event.user, event.at)
        usage.tokens_today += event.prompt_tokens + event.completion_tokens
        if self._limits.tokens_per_day is None:
            return []
        return self._crossing(
            seq,
            event,
            usage,
            "tokens",
            self._limits.tokens_per_day,
            usage.tokens_today,
            window=usage.day,
            window_start=datetime.fromisoformat(usage.day).replace(tzinfo=UTC),
        )

    def _response(self, seq: int, event: TurnCompleted) -> Observation:
        info = self._turns.pop(event.turn_id, None) or _TurnInfo()
        tokens_used = (
            info.prompt_tokens + info.completion_tokens
            if info.prompt_tokens is not None and info.completion_tokens is not None
            else None
        )
        return Observation(
            seq,
            RESPONSE_SUBJECT,
            {
                "channel": event.channel,
                "user": event.user,
                "provider": event.provider,
                "model": event.model,
                "tokens_used": tokens_used,
                "prompt_tokens": info.prompt_tokens,
                "completion_tokens": info.completion_tokens,
                "latency_ms": event.latency_ms,
                "prompt_length": info.message_length,
                "response_length": len(event.content),
                "persona": info.persona,
                "purpose": info.purpose,
                "source": info.source,
                "finish_reason": event.finish_reason,
                "fallback_from": list(event.fallback_from),
                "turn_id": event.turn_id,
                "timestamp": iso_utc(event.at),
                "seq": seq,
            },
        )

    def _failed(self, seq: int, event: TurnFailed) -> Observation:
        info = self._turns.pop(event.turn_id, None) or _TurnInfo()
        return Observation(
            seq,
            ERROR_SUBJECT,
            {
                "channel": event.channel,
                "user": event.user,
                "error": event.error,
                "error_type": event.error_type,
                "provider": info.provider,
                "purpose": info.purpose,
                "turn_id": event.turn_id,
                "timestamp": iso_utc(event.at),
                "seq": seq,
            },
        )

    def _rejected(self, seq: int, event: TurnRejected) -> Observation:
        return Observation(
            seq,
            ERROR_SUBJECT,
            {
                "channel": event.channel,
                "user": event.user,
                "error": event.detail,
                "error_type": event.reason,
                "provider": None,
                "window": event.window,
                "limit": event.limit,
                "turn_id": event.turn_id,
                "timestamp": iso_utc(event.at),
                "seq": seq,
            },
        )

    # ------------------------------------------------------------ memories

    def _memory(
        self, seq: int, event: MemoryAdded | MemoryRecalled | MemoryForgotten
    ) -> Observation:
        if isinstance(event, MemoryAdded):
            user, ids, extra = event.user_id, [event.memory_id], {"category": event.category}
        elif isinstance(event, MemoryRecalled):
            user, ids, extra = event.user, list(event.memory_ids), {}
        else:
            user, ids, extra = event.user, [event.memory_id], {}
        return Observation(
            seq,
            MEMORY_SUBJECT,
            {
                "channel": event.channel,
                "user": user,
                "user_id": user,
                "action": MEMORY_ACTIONS[type(event)],
                "memory_id": ids[0] if len(ids) == 1 else None,
                "memory_ids": ids,
                "memory_count": len(ids),
                **extra,
                "timestamp": iso_utc(event.at),
                "seq": seq,
            },
        )

    # ------------------------------------------------------------ usage thresholds

    def _usage_of(self, user: str, at: datetime) -> _UserUsage:
        moment = at.timestamp()
        day = day_of(at)
        usage = self._users.get(user)
        if usage is None:
            usage = self._users[user] = _UserUsage(
                day=day, last_seen=moment, recent=deque(maxlen=self._keep or 1)
            )
        else:
            self._users.move_to_end(user)
            usage.last_seen = max(usage.last_seen, moment)
            # Forward only, as the usage view: a late event stamped the day before
            # counts into the current day rather than resetting it.
            if day > usage.day:
                usage.day = day
                usage.requests_today = usage.tokens_today = 0
        self._forget_idle_users(moment)
        return usage

    def _forget_idle_users(self, now: float) -> None:
        users = self._users
        while users:
            oldest = next(iter(users.values()))
            if oldest.last_seen >= now - _USER_IDLE_SECONDS and len(users) <= MAX_TRACKED_USERS:
                return
            users.popitem(last=False)

    def _crossing(
        self,
        seq: int,
        event: TurnAdmitted | TokensSpent,
        usage: _UserUsage,
        kind: str,
        limit: int,
        current: int,
        *,
        window: int | str,
        window_start: datetime,
    ) -> list[Observation]:
        if current * THRESHOLD_DENOMINATOR < limit * THRESHOLD_NUMERATOR:
            return []
        if usage.fired.get(kind) == window:
            return []
        usage.fired[kind] = window
        return [
            Observation(
                seq,
                USAGE_THRESHOLD_SUBJECT,
                {
                    "user": event.user,
                    "channel": event.channel,
                    "threshold_type": kind,
                    "percentage": round(current / limit, 4),
                    "limit": limit,
                    "current": current,
                    "window_start": iso_utc(window_start),
                    "turn_id": event.turn_id,
                    "timestamp": iso_utc(event.at),
                    "seq": seq,
                },
            )
        ]


# ---------------------------------------------------------------- position


async def ensure_position_bucket(js: JetStreamContext) -> KeyValue:
    """The bucket holding the publisher's position (no TTL: it must outlive every instance)."""
    try:
        return await js.key_value(POSITION_BUCKET)
    except BucketNotFoundError:
        pass
    with contextlib.suppress(APIError):
        return await js.create_key_value(
            api.KeyValueConfig(
                bucket=POSITION_BUCKET,
                history=1,
                storage=api.StorageType.FILE,
                direct=True,
                description="llm-es: last log sequence published on rosey.event.llm.*",
            )
        )
    return await js.key_value(POSITION_BUCKET)


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
                    await self._nc.publish(observation.subject, observation.payload())
                    published += 1
        await self._nc.flush()
        log_kv(logger, "events_republished", from_seq=from_seq, to_seq=end, count=published)
        return published

    # ------------------------------------------------------------ leadership

    async def _supervise(self) -> None:
        assert self._lease is not None
        lease = self._lease
        interval = min(lease.ttl_seconds / RENEWALS_PER_TTL, MAX_POLL_SECONDS)
        while not self._stopping.is_set():
            try:
                if self._worker is None:
                    if await lease.acquire():
                        self._worker = asyncio.create_task(self._lead(), name="event-publishing")
                elif self._worker.done() or not await lease.renew():
                    await self._step_down()
            except Exception:  # the loop must outlive any one failure; logged in full
                logger.exception("event_publisher_supervisor_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stopping.wait()

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
            position = 0 if self._from_beginning else await self._store.last_seq()
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
                        await self._nc.publish(observation.subject, observation.payload())
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
