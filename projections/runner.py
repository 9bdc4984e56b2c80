"""The view runner: folds the log into KV bucket `llm_data`, in order, and tells who waits.

At start it loads the bucket (views and one checkpoint per projection) into
memory, then follows the stream with an ordered consumer from the lowest
checkpoint. Each event is applied to every projection whose checkpoint is
behind it; a value that already records a sequence >= the event's is left
alone, so replays are harmless.

Reads are served from the in-memory views, and `position` (what waiters wait
for: read-your-writes) moves as soon as an event is folded. Writing to KV is
off the request path: changed keys are written in pipelined batches a few
milliseconds later, then the checkpoints (`persisted`). A crash between the
two only means the next start folds a few events again, which the per-value
`seq` makes harmless. Every instance folds the log itself, so each one has
read-your-writes without waiting for another's KV writes.

Blue/green: which bucket holds the live views is named by the key
`views.active` of the small bucket `llm_meta` (absent: `llm_data`).
`llm-replay rebuild` folds the log into a fresh bucket and then moves that
pointer; `ViewRunner` watches it, starts folding into the new bucket beside
the old one, and swaps only once the new views have caught up with the old
ones, so readers never see a half-built view.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyValueError,
)
from nats.js.kv import KeyValue

from llm_es.codec import UnknownEventError, decode_event
from llm_es.config import Config
from llm_es.headers import KV_OPERATION
from llm_es.kv import read_bucket
from llm_es.logs import log_kv
from llm_es.store import EventStore
from llm_es.views import (
    ACTIVE_VIEWS_KEY,
    BUCKET,
    META_BUCKET,
    ActiveViews,
    checkpoint_key,
    parse_active_views,
)
from projections.base import Projection, View
from projections.context import ContextProjection
from projections.memories import MemoriesProjection
from projections.settings import SettingsProjection
from projections.usage import UsageProjection

logger = logging.getLogger("projections.runner")

LOAD_TIMEOUT_SECONDS = 30.0
FLUSH_RETRY_SECONDS = 0.5
HEARTBEAT_SECONDS = 1.0
FLUSH_LINGER_SECONDS = 0.005
"""How long changes gather before a KV write batch: batches grow under load."""
_WAITER_ORDER = itertools.count()
"""Tie-breaker of waiters on one sequence; shared, so waiters can move between buckets."""
SWITCH_CATCH_UP_SECONDS = 300.0
"""Longest a newly activated bucket may take to catch up before the switch is abandoned."""
SWITCH_MAX_ROUNDS = 100_000


def views_bucket_config(bucket: str) -> api.KeyValueConfig:
    """Settings of a views bucket (the live one and every blue/green generation)."""
    return api.KeyValueConfig(
        bucket=bucket,
        history=1,
        storage=api.StorageType.FILE,
        direct=True,
        description="llm-es views, folded from the LLM_EVENTS log",
    )


async def ensure_meta_bucket(js: JetStreamContext) -> KeyValue:
    """The pointer bucket, created on first use."""
    try:
        return await js.key_value(META_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            api.KeyValueConfig(
                bucket=META_BUCKET,
                history=5,
                storage=api.StorageType.FILE,
                direct=True,
                description="llm-es: which views bucket is live (blue/green)",
            )
        )


async def read_active_views(js: JetStreamContext) -> ActiveViews:
    """The live views bucket as the pointer names it now (`llm_data` when there is none)."""
    kv = await ensure_meta_bucket(js)
    try:
        entry = await kv.get(ACTIVE_VIEWS_KEY)
    except (KeyNotFoundError, KeyDeletedError):
        return ActiveViews(BUCKET, 1, 0)
    return parse_active_views(entry.value, entry.revision or 0)


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


class BucketViews:
    """Folds the event log into the views of one KV bucket and serves reads from memory."""

    def __init__(
        self,
        js: JetStreamContext,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        bucket: str = BUCKET,
    ) -> None:
        self._js = js
        self._store = store
        self._projections = list(projections)
        self._bucket_name = bucket
        self._kv: KeyValue | None = None
        self._values: dict[str, View] = {}
        self._groups: dict[str, set[str]] = {}
        self._checkpoints: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._applied = 0
        self._persisted = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._sub: JetStreamContext.PushSubscription | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_wanted = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------ ViewReader

    @property
    def position(self) -> int:
        return self._applied

    @property
    def persisted(self) -> int:
        """Last stream sequence whose views and checkpoints are written to KV."""
        return self._persisted

    async def wait_for(self, seq: int) -> None:
        if self._applied >= seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (seq, next(_WAITER_ORDER), future))
        await future

    async def catch_up(self) -> int:
        last = await self._store.last_seq()
        await self.wait_for(last)
        return last

    def get(self, key: str) -> dict[str, Any] | None:
        return self._values.get(key)

    def values_under(self, group: str) -> list[dict[str, Any]]:
        return [self._values[k] for k in sorted(self._groups.get(group, ()))]

    def keys_under(self, prefix: str) -> list[str]:
        return sorted(k for k in self._values if k.startswith(prefix))

    def snapshot(self) -> dict[str, View]:
        """Every view value (checkpoints excluded), for comparisons and tools."""
        return {k: v for k, v in self._values.items() if not k.startswith("checkpoint.")}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the bucket, then follow the log from the lowest checkpoint."""
        self._kv = await self._ensure_bucket()
        await self._load_bucket()
        for projection in self._projections:
            stored = self._values.get(checkpoint_key(projection.name))
            self._checkpoints[projection.name] = int(stored["seq"]) if stored else 0
        start = min(self._checkpoints.values(), default=0)
        self._applied = self._persisted = start
        self._flush_task = asyncio.create_task(self._flush_loop(), name="view-flush")
        self._sub = await self._js.subscribe(
            f"{self._store.prefix}.>",
            stream=self._store.stream,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=start + 1),
            cb=self._on_message,
            manual_ack=True,
            pending_msgs_limit=-1,
            # Missing two heartbeats re-creates the consumer: after a nats-server
            # restart the views resume within seconds (nats-py's default is 5 s).
            idle_heartbeat=HEARTBEAT_SECONDS,
        )
        log_kv(logger, "views_started", bucket=self._bucket_name, from_seq=start + 1)

    async def stop(self) -> None:
        """Stop following the log after writing what was applied."""
        self._stopping = True
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        if self._flush_task is not None:
            self._flush_wanted.set()
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
        if self._dirty or self._applied > self._persisted:
            with contextlib.suppress(nats.errors.Error, KeyValueError, asyncio.TimeoutError):
                async with asyncio.timeout(5):
                    await self._flush_once()
        for _, _, future in self._waiters:
            if not future.done():
                future.cancel()
        self._waiters.clear()

    @property
    def bucket(self) -> str:
        return self._bucket_name

    def take_waiters(self, other: BucketViews) -> None:
        """Adopt `other`'s pending waiters (a blue/green switch), waking those already met."""
        for waiter in other._waiters:
            heapq.heappush(self._waiters, waiter)
        other._waiters = []
        self._wake(self._applied)

    async def _ensure_bucket(self) -> KeyValue:
        try:
            return await self._js.key_value(self._bucket_name)
        except BucketNotFoundError:
            return await self._js.create_key_value(views_bucket_config(self._bucket_name))

    async def _load_bucket(self) -> None:
        async with asyncio.timeout(LOAD_TIMEOUT_SECONDS):
            stored = await read_bucket(self._js, self._bucket_name)
        for key, raw in stored.items():
            self._store_value(key, orjson.loads(raw))

    # ------------------------------------------------------------ folding

    async def _on_message(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq <= self._applied:
            return
        try:
            event = decode_event(msg.data)
        except UnknownEventError as exc:
            # An event this code cannot read must not stop every view; it is skipped loudly.
            log_kv(logger, "event_skipped", level=logging.ERROR, seq=seq, error=str(exc))
        else:
            self._apply(event, seq)
        self._applied = seq
        self._wake(seq)
        self._flush_wanted.set()

    def _apply(self, event: Any, seq: int) -> None:
        for projection in self._projections:
            if seq <= self._checkpoints[projection.name]:
                continue
            for key in projection.keys_for(event):
                current = self._values.get(key)
                if current is not None and current.get("seq", 0) >= seq:
                    continue
                updated = projection.apply(key, current, event, seq)
                if updated is None:
                    if current is not None:
                        self._drop_value(key)
                        self._dirty.add(key)
                else:
                    self._store_value(key, updated)
                    self._dirty.add(key)

    def _store_value(self, key: str, value: View) -> None:
        self._values[key] = value
        group, _, _ = key.rpartition(".")
        self._groups.setdefault(group, set()).add(key)

    def _drop_value(self, key: str) -> None:
        self._values.pop(key, None)
        group, _, _ = key.rpartition(".")
        members = self._groups.get(group)
        if members is not None:
            members.discard(key)
            if not members:
                del self._groups[group]

    # ------------------------------------------------------------ writing

    async def _flush_loop(self) -> None:
        while not self._stopping:
            await self._flush_wanted.wait()
            await asyncio.sleep(FLUSH_LINGER_SECONDS)
            self._flush_wanted.clear()
            try:
                await self._flush_once()
            except (TimeoutError, nats.errors.Error, KeyValueError) as exc:
                log_kv(logger, "views_flush_failed", level=logging.WARNING, error=repr(exc))
                self._flush_wanted.set()
                await asyncio.sleep(FLUSH_RETRY_SECONDS)

    async def _flush_once(self) -> None:
        """Write changed keys, then the checkpoints that say they are written."""
        target = self._applied
        if target <= self._persisted and not self._dirty:
            return
        assert self._kv is not None
        kv = self._kv
        keys, self._dirty = self._dirty, set()
        try:
            await asyncio.gather(*(self._write(kv, key) for key in keys))
        except BaseException:
            self._dirty |= keys
            raise
        for name, checkpoint in self._checkpoints.items():
            if checkpoint < target:
                self._checkpoints[name] = target
        checkpoint_writes = []
        for name in self._checkpoints:
            value: View = {"seq": target}
            self._store_value(checkpoint_key(name), value)
            checkpoint_writes.append(kv.put(checkpoint_key(name), orjson.dumps(value)))
        await asyncio.gather(*checkpoint_writes)
        self._persisted = target

    async def _write(self, kv: KeyValue, key: str) -> None:
        value = self._values.get(key)
        if value is None:
            await kv.delete(key)
        else:
            await kv.put(key, orjson.dumps(value))

    def _wake(self, position: int) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= position:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)


class ViewRunner:
    """The plugin's read side: the views of the live bucket, following blue/green switches.

    With `bucket` given, the views stay in that bucket and the pointer is ignored.
    """

    def __init__(
        self,
        js: JetStreamContext,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        bucket: str | None = None,
    ) -> None:
        self._js = js
        self._store = store
        self._projections = list(projections)
        self._fixed_bucket = bucket
        self._active: BucketViews | None = None
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

    @property
    def persisted(self) -> int:
        """Last stream sequence whose views and checkpoints are written to KV."""
        return self.views.persisted

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

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start on the live bucket, then watch the blue/green pointer."""
        bucket = self._fixed_bucket
        if bucket is None:
            bucket = (await read_active_views(self._js)).bucket
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
        return BucketViews(self._js, self._store, self._projections, bucket=bucket)

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
    """Entry point `llm_es.views:default`: what `llm-es serve` runs for the read side."""
    del nc  # the runner needs only JetStream; the signature is the entry point's contract
    return ViewRunner(js, store, default_projections(config))
