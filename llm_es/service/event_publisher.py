"""Observability events `rosey.event.llm.*`, derived from the event log by one active publisher.

Nothing here is called by a request handler: the publisher follows `llm.ev.>`
(`ObservationSource`: the views' fold in the plugin, else an ordered consumer of
its own) and maps what was recorded to the seed's events (the pure
`ObservationFold`), so the events say what the log says and can be derived
again from any position (`EventPublisher.republish`).

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

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import (
    APIError,
    KeyNotFoundError,
    KeyValueError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from llm_es.config import Config
from llm_es.domain.observations import EVENT_SUBJECT_PREFIX, Observation
from llm_es.domain.views import EventFeed
from llm_es.errors import OperationalError
from llm_es.logs import log_kv
from llm_es.metrics import PluginMetrics
from llm_es.service.observation_source import ObservationSource
from llm_es.service.publisher_position import (
    POSITION_KEY,
    ensure_position_bucket,
    position_of,
    position_value,
)
from llm_es.store.lease import KvLease, holder_of, keep_single_active, open_lease
from llm_es.store.liveness import new_instance_id
from llm_es.store.log import EventStore
from llm_es.tasks import finish_task

logger = logging.getLogger("llm_es.service.event_publisher")

LEASE_KEY = "event-publisher"

DEFAULT_LEASE_TTL_SECONDS = 10.0
POSITION_SAVE_EVENTS = 256
POSITION_SAVE_SECONDS = 1.0
STOP_GRACE_SECONDS = 10.0
LEAD_RETRY_SECONDS = 0.5
LEAD_ATTEMPTS = 1000  # a bound; the lease's expiry ends the retries first
REPUBLISH_IDLE_LIMIT = 50
"""Idle polls in a row after which a republish gives up (the events it expects never came)."""


# ---------------------------------------------------------------- publisher


class _FenceLost(Exception):
    """Another instance wrote the position: this one is no longer the publisher."""


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
        metrics: PluginMetrics | None = None,
    ) -> None:
        self._nc = nc
        self._published_count = (metrics or PluginMetrics()).events_published
        self._feed = feed
        self._js = js
        self._store = store
        self._config = config
        self._source = ObservationSource(js, store, config.rate_limits)
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
        self._crashed = False

    @property
    def crashed(self) -> bool:
        """Whether the last attempt to publish died of an unexpected error (and no later
        one has got going since): `rosey.llm.status` is not healthy meanwhile."""
        return self._crashed

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
        replicas = self._config.nats.replicas
        self._lease = await open_lease(
            self._js, LEASE_KEY, self.instance_id, self._lease_ttl, replicas=replicas
        )
        ttl = self._lease.ttl_seconds
        self._positions = await ensure_position_bucket(self._js, replicas=replicas)
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
        kv = self._positions or await ensure_position_bucket(
            self._js, replicas=self._config.nats.replicas
        )
        try:
            entry = await kv.get(POSITION_KEY)
        except KeyNotFoundError:
            return 0
        return position_of(entry.value)

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
        async with contextlib.aclosing(self._source.derive(from_seq - 1, until=end)) as steps:
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
        kind = observation.subject.removeprefix(EVENT_SUBJECT_PREFIX).lstrip(".")
        self._published_count.labels(kind).inc()

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
                POSITION_KEY, position_value(position, self.instance_id)
            )
        else:
            position = position_of(entry.value)
            if holder_of(entry.value) == self.instance_id:
                # Nobody wrote it since this instance did: what it published since counts.
                position = max(position, self._published)
            self._position_revision = await self._positions.update(
                POSITION_KEY, position_value(position, self.instance_id), last=entry.revision
            )
        self._published = self._saved = position
        self._last_save = time.monotonic()
        return position

    async def _save_position(self) -> None:
        assert self._positions is not None
        target = self._published
        value = position_value(target, self.instance_id)
        try:
            revision = await self._positions.update(
                POSITION_KEY, value, last=self._position_revision
            )
        except KeyWrongLastSequenceError as exc:
            # A save sent while nats-server was away may be stored unseen: still ours then.
            entry = await self._positions.get(POSITION_KEY)
            if holder_of(entry.value) != self.instance_id:
                raise _FenceLost from exc
            revision = await self._positions.update(POSITION_KEY, value, last=entry.revision)
        self._position_revision = revision
        self._saved = target
        self._last_save = time.monotonic()

    def _save_due(self) -> bool:
        return (
            self._published - self._saved >= POSITION_SAVE_EVENTS
            or time.monotonic() - self._last_save >= POSITION_SAVE_SECONDS
        )

    async def _lead(self) -> None:
        """Publish from the stored position while the lease is ours; after a failed KV
        or NATS call (a nats-server restart) claim the position again and go on, without
        handing the lease back."""
        assert self._lease is not None
        lease = self._lease
        try:
            for attempt in range(LEAD_ATTEMPTS):
                if attempt:
                    await asyncio.sleep(LEAD_RETRY_SECONDS)
                if self._stopping.is_set() or not lease.held():
                    return
                try:
                    await self._publish_while_held(lease)
                    return
                except nats.errors.Error as exc:  # KV and JetStream errors included
                    log_kv(logger, "event_publisher_failed", level=logging.WARNING, error=repr(exc))
        except _FenceLost:
            log_kv(
                logger, "event_publisher_deposed", level=logging.WARNING, instance=self.instance_id
            )
        except Exception:  # e.g. an unreadable stored position: logged in full, lease released
            self._crashed = True
            logger.exception("event_publisher_crashed instance=%s", self.instance_id)
        finally:
            self._leading = False

    async def _publish_while_held(self, lease: KvLease) -> None:
        position = await self._claim_position()
        self._leading = True
        log_kv(logger, "event_publisher_leading", instance=self.instance_id, position=position)
        async with contextlib.aclosing(
            self._source.derive(position, until=None, feed=self._feed)
        ) as steps:
            async for step in steps:
                self._crashed = False
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
