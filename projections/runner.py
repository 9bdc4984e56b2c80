"""The view runner: folds the log into KV bucket `llm_data`, in order, and tells who waits.

One bucket's fold and waiters are `projections.memory_views.MemoryViews`, its lease
and writes `projections.bucket_views.BucketViews`;
its buckets' config and keys `projections.buckets`; this module follows the
blue/green pointer and hands the folded events on (`EventFeed`).

At start it loads the bucket (views and one checkpoint per projection) into
memory, then follows the stream with an ordered consumer from the lowest
checkpoint. Each event is applied to every projection whose checkpoint is
behind it; a value that already records a sequence >= the event's is left
alone, so replays are harmless.

Reads are served from the in-memory views, and `position` (what waiters wait
for: read-your-writes) moves as soon as an event is folded. Every instance
folds the log itself, so each one has read-your-writes without waiting for
another's KV writes.

Writing to KV is single-active and off the request path: the holder of the lease
`views.<bucket>` (KV bucket `llm_leases`) writes changed keys in pipelined
batches a few milliseconds later, and the checkpoints at most once a second
(`CHECKPOINT_INTERVAL_SECONDS`). The other instances stand by: they remember
which keys they changed since the stored checkpoints, and the one that takes the
lease over (when the holder stops, or dies and its lease expires) writes those,
so nothing is lost. A crash between values and checkpoints only means the next
start folds a few events again, which the per-value `seq` makes harmless.

Blue/green: which bucket holds the live views is named by the key
`views.active` of the small bucket `llm_meta` (absent: `llm_data`).
`llm-replay rebuild` folds the log into a fresh bucket and then moves that
pointer; `ViewRunner` watches it, starts folding into the new bucket beside
the old one, and swaps only once the new views have caught up with the old
ones, so readers never see a half-built view. Each bucket has its own lease,
so each generation has its own writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import (
    BucketNotFoundError,
    KeyValueError,
)

from llm_es.config import Config
from llm_es.domain.events import Event
from llm_es.domain.views import (
    ACTIVE_VIEWS_KEY,
    META_BUCKET,
    EventListener,
    parse_active_views,
)
from llm_es.headers import KV_OPERATION
from llm_es.logs import log_kv
from llm_es.store.liveness import new_instance_id
from llm_es.store.log import EventStore
from llm_es.store.quarantine import Quarantine
from projections.base import Projection, View
from projections.bucket_views import DEFAULT_LEASE_TTL_SECONDS, HEARTBEAT_SECONDS, BucketViews
from projections.buckets import read_active_views
from projections.context import ContextProjection
from projections.memories import MemoriesProjection
from projections.settings import SettingsProjection
from projections.usage import UsageProjection

logger = logging.getLogger("projections.runner")

SWITCH_CATCH_UP_SECONDS = 300.0
"""Longest a newly activated bucket may take to catch up before the switch is abandoned."""
SWITCH_MAX_ROUNDS = 100_000


def context_history_size(config: Config) -> int:
    """Messages a channel's context view holds: the prompt window, or room for the
    summarizer to run (twice its threshold) when summaries are on."""
    threshold = config.service.summarize_after_messages
    window = config.service.max_context_messages
    return window if threshold is None else max(window, 2 * threshold)


def default_projections(config: Config) -> list[Projection]:
    """The four views the plugin reads."""
    windows = (config.rate_limits.requests_per_minute, config.rate_limits.requests_per_hour)
    return [
        ContextProjection(context_history_size(config)),
        MemoriesProjection(),
        SettingsProjection(),
        UsageProjection(keep_requests=max((w for w in windows if w is not None), default=0)),
    ]


class ViewRunner:
    """The plugin's read side: the views of the live bucket, following blue/green switches.

    With `bucket` given, the views stay in that bucket and the pointer is ignored.
    With `instance_id` given, only the holder of each bucket's lease writes it
    (see `BucketViews`); without it this runner writes unconditionally. Its
    buckets keep as many replicas as the log (`store.replicas`, `nats.replicas`).
    """

    def __init__(
        self,
        js: JetStreamContext,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        bucket: str | None = None,
        instance_id: str | None = None,
        lease_ttl_seconds: float = DEFAULT_LEASE_TTL_SECONDS,
    ) -> None:
        self._js = js
        self._store = store
        self._projections = list(projections)
        self._fixed_bucket = bucket
        self._instance_id = instance_id
        self._lease_ttl = lease_ttl_seconds
        self._active: BucketViews | None = None
        self._listeners: list[EventListener] = []
        self._delivered = 0
        """Highest sequence handed to the listeners (by whichever bucket folded it first)."""
        self._watch: JetStreamContext.PushSubscription | None = None
        self._wanted: str | None = None
        self._switch_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def views(self) -> BucketViews:
        if self._active is None:
            raise RuntimeError("view runner not started")
        return self._active

    @property
    def bucket(self) -> str:
        """The bucket the views are written to now."""
        return self.views.bucket

    # ------------------------------------------------------------ ViewReader

    @property
    def position(self) -> int:
        return self.views.position

    def lease_held(self) -> bool:
        """Whether this instance writes the live views bucket now."""
        return self.views.lease_held()

    def projection_positions(self) -> dict[str, int]:
        """Projection name -> last log sequence its live views include."""
        return self.views.projection_positions()

    @property
    def quarantine(self) -> Quarantine:
        """Events the live views skipped (`llm_es.store.quarantine`): a rebuild skips them too."""
        return self.views.quarantine

    @property
    def writer(self) -> str | None:
        """The instance writing the live views bucket, as this one last saw it."""
        return self.views.writer

    async def wait_for(self, seq: int) -> None:
        await self.views.wait_for(seq)

    async def catch_up(self) -> int:
        return await self.views.catch_up()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.views.get(key)

    def values_under(self, group: str) -> list[dict[str, Any]]:
        return self.views.values_under(group)

    def keys_under(self, prefix: str) -> list[str]:
        return self.views.keys_under(prefix)

    def snapshot(self) -> dict[str, View]:
        """Every view value (checkpoints excluded), for comparisons and tools."""
        return self.views.snapshot()

    # ------------------------------------------------------------ EventFeed

    def follow(self, listener: EventListener) -> tuple[int, Callable[[], None]]:
        """See `llm_es.domain.views.EventFeed`. Across a blue/green switch both buckets fold
        the log; each event is handed on once, by the first fold to reach it."""
        self._listeners.append(listener)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return max(self._delivered, self.views.position), stop

    def _deliver(self, seq: int, event: Event | None) -> None:
        if seq <= self._delivered:
            return
        self._delivered = seq
        for listener in tuple(self._listeners):
            listener(seq, event)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start on the live bucket, then watch the blue/green pointer."""
        bucket = self._fixed_bucket
        if bucket is None:
            bucket = (await read_active_views(self._js, replicas=self._store.replicas)).bucket
        self._active = self._bucket_views(bucket)
        await self._active.start()
        if self._fixed_bucket is None:
            self._watch = await self._js.subscribe(
                f"$KV.{META_BUCKET}.{ACTIVE_VIEWS_KEY}",
                stream=f"KV_{META_BUCKET}",
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                cb=self._on_pointer,
                manual_ack=True,
                idle_heartbeat=HEARTBEAT_SECONDS * 5,
            )

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._watch.unsubscribe()
            self._watch = None
        if self._switch_task is not None:
            self._switch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._switch_task
            self._switch_task = None
        if self._active is not None:
            await self._active.stop()

    def _bucket_views(self, bucket: str) -> BucketViews:
        return BucketViews(
            self._js,
            self._store,
            self._projections,
            bucket=bucket,
            instance_id=self._instance_id,
            lease_ttl_seconds=self._lease_ttl,
            on_event=self._deliver,
        )

    # ------------------------------------------------------------ blue/green

    async def _on_pointer(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(KV_OPERATION):
            return  # a deleted pointer leaves the views where they are
        wanted = parse_active_views(msg.data, 0).bucket
        if self._stopping or self._active is None:
            return
        self._wanted = wanted
        if self._switch_task is None or self._switch_task.done():
            self._switch_task = asyncio.create_task(self._follow_pointer(), name="views-switch")

    async def _follow_pointer(self) -> None:
        # Bounded: each round either switches or gives up on the bucket it was asked for.
        for _ in range(100):
            wanted, self._wanted = self._wanted, None
            if wanted is None or self._stopping:
                return
            if self._active is not None and wanted != self._active.bucket:
                await self._switch_to(wanted)

    async def _switch_to(self, bucket: str) -> None:
        """Fold into `bucket` beside the live views; swap once it has caught up with them."""
        assert self._active is not None
        try:
            await self._js.key_value(bucket)
        except BucketNotFoundError:
            log_kv(
                logger,
                "views_switch_refused",
                level=logging.ERROR,
                bucket=bucket,
                reason="bucket does not exist",
            )
            return
        candidate = self._bucket_views(bucket)
        try:
            await candidate.start()
            async with asyncio.timeout(SWITCH_CATCH_UP_SECONDS):
                # Both follow the log; the swap happens (no await between the check
                # and it) only when the candidate is at least where the live views are.
                for _ in range(SWITCH_MAX_ROUNDS):
                    if candidate.position >= self._active.position:
                        break
                    await candidate.wait_for(self._active.position)
                else:
                    raise TimeoutError("the new views kept falling behind the live ones")
        except (TimeoutError, nats.errors.Error, KeyValueError) as exc:
            log_kv(
                logger, "views_switch_failed", level=logging.ERROR, bucket=bucket, error=repr(exc)
            )
            await candidate.stop()
            return
        except asyncio.CancelledError:
            await candidate.stop()  # hands its lease over instead of leaving it to expire
            raise
        previous, self._active = self._active, candidate
        candidate.take_waiters(previous)
        await previous.stop()
        log_kv(
            logger,
            "views_switched",
            bucket=bucket,
            previous=previous.bucket,
            position=candidate.position,
        )


def build_view_runner(
    nc: NATS, js: JetStreamContext, store: EventStore, config: Config
) -> ViewRunner:
    """Entry point `llm_es.domain.views:default`: what `llm-es serve` runs for the read side.

    Writing the views is single-active across instances: the lease holder is
    `service.instance_id` (a fresh random id when the config names none), the
    TTL `service.instance_ttl_seconds`.
    """
    del nc  # the runner needs only JetStream; the signature is the entry point's contract
    service = config.service
    return ViewRunner(
        js,
        store,
        default_projections(config),
        instance_id=service.instance_id or new_instance_id(),
        lease_ttl_seconds=service.instance_ttl_seconds,
    )
