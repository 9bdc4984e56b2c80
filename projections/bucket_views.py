"""One views bucket: the in-memory fold of the log into it, its waiters, and (while this
instance holds its lease) the batched KV writes of its values and checkpoints.

See `projections.runner` for how buckets are followed and swapped (blue/green).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.errors import (
    KeyDeletedError,
    KeyNotFoundError,
    KeyValueError,
)
from nats.js.kv import KeyValue

from llm_es.domain.events import Event
from llm_es.domain.views import (
    BUCKET,
    EventListener,
    checkpoint_key,
)
from llm_es.logs import log_kv
from llm_es.store.codec import UnknownEventError, decode_event
from llm_es.store.follow import Following, follow
from llm_es.store.kv import ensure_bucket, read_bucket
from llm_es.store.lease import KvLease, keep_single_active, open_lease
from llm_es.store.log import EventStore
from llm_es.tasks import finish_task
from projections.base import Projection, View
from projections.buckets import stored_checkpoint_seq, views_bucket_config, views_lease_key

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_SECONDS = 30.0
FLUSH_RETRY_SECONDS = 0.5
HEARTBEAT_SECONDS = 1.0
FLUSH_LINGER_SECONDS = 0.05
"""How long changes gather before a KV write batch. Reads are served from memory, so
KV may trail by this much; in exchange a key changed by several turns meanwhile (a busy
channel's context, a user's usage) is written once, and the writes stay out of the way
of requests (5 ms put a batch in the middle of nearly every turn at concurrency 1)."""
_WAITER_ORDER = itertools.count()
"""Tie-breaker of waiters on one sequence; shared, so waiters can move between buckets."""
CHECKPOINT_INTERVAL_SECONDS = 1.0
"""Checkpoints are written at most this often (and at stop and takeover); values every batch."""
DEFAULT_LEASE_TTL_SECONDS = 15.0
"""Lease TTL asked for when a runner creates the leases bucket (`service.instance_ttl_seconds`)."""
STOP_FLUSH_SECONDS = 5.0


class BucketViews:
    """Folds the event log into the views of one KV bucket and serves reads from memory.

    Every instance folds the log (reads and read-your-writes come from its own
    memory). With `instance_id` given, only the holder of the lease
    `views.<bucket>` (KV bucket `llm_leases`, TTL = its `max_age`) writes the
    bucket; without it this runner writes unconditionally (one process alone).

    A standby keeps, for every key it changed, the sequence of its last change
    (`_dirty`, bounded by the number of keys), and forgets the entries the
    stored checkpoints cover (every change up to a checkpoint is in KV). When it
    takes the lease it writes what is left, then its checkpoints, so a handover
    loses nothing. It writes nothing before its fold reaches the highest stored
    checkpoint, so no value older than what a checkpoint vouches for ever
    replaces a newer one, and checkpoints never move back.
    """

    def __init__(
        self,
        js: JetStreamContext,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        bucket: str = BUCKET,
        instance_id: str | None = None,
        lease_ttl_seconds: float = DEFAULT_LEASE_TTL_SECONDS,
        on_event: EventListener | None = None,
    ) -> None:
        self._js = js
        self._store = store
        self._projections = list(projections)
        self._on_event = on_event
        """Told of every event folded, after the fold and its waiters (see `EventFeed`)."""
        self._bucket_name = bucket
        self._kv: KeyValue | None = None
        self._values: dict[str, View] = {}
        self._groups: dict[str, set[str]] = {}
        self._checkpoints: dict[str, int] = {}
        self._dirty: dict[str, int] = {}
        """Changed keys not known to be in KV -> stream sequence of their last change."""
        self._applied = 0
        self._written = 0
        """Every change up to this sequence is in KV (its checkpoints may lag behind)."""
        self._persisted = 0
        self._floor = 0
        """No writes before the fold reaches it: the highest stored checkpoint at takeover."""
        self._last_checkpoint = 0.0
        self._checkpoint_now = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._following: Following | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_wanted = asyncio.Event()
        self._stopping = False
        self._instance_id = instance_id
        self._lease_ttl = lease_ttl_seconds
        self._lease: KvLease | None = None
        self._holding = False
        self._writer: str | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._halt = asyncio.Event()

    # ------------------------------------------------------------ ViewReader

    @property
    def position(self) -> int:
        return self._applied

    @property
    def persisted(self) -> int:
        """Last stream sequence whose views and checkpoints are in KV.

        The writer's own; a standby reports the lowest checkpoint it last read.
        """
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

    def projection_positions(self) -> dict[str, int]:
        """How far each projection's views include the log (a stored checkpoint ahead of the
        fold means the projection already has those events)."""
        return {name: max(self._applied, seq) for name, seq in self._checkpoints.items()}

    # ------------------------------------------------------------ who writes

    def lease_held(self) -> bool:
        """Whether this instance writes the bucket now (always, when it runs without a lease)."""
        if self._instance_id is None:
            return True
        return self._holding and self._lease is not None and self._lease.held()

    @property
    def writer(self) -> str | None:
        """The instance writing the bucket as this one last saw it (itself while it holds
        the lease; None when nobody holds it or no lease is used)."""
        return self._writer

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the bucket, try for the lease, follow the log from the lowest checkpoint."""
        self._kv = await self._ensure_bucket()
        await self._load_bucket()
        for projection in self._projections:
            stored = self._values.get(checkpoint_key(projection.name))
            self._checkpoints[projection.name] = int(stored["seq"]) if stored else 0
        start = min(self._checkpoints.values(), default=0)
        self._applied = self._persisted = self._written = start
        if self._instance_id is not None:
            self._lease = await open_lease(
                self._js, views_lease_key(self._bucket_name), self._instance_id, self._lease_ttl
            )
            try:  # at once: an instance alone writes from its first event
                await self._try_lease()
            except (TimeoutError, nats.errors.Error) as exc:
                log_kv(logger, "views_lease_failed", level=logging.WARNING, error=repr(exc))
            self._lease_task = asyncio.create_task(self._lease_loop(), name="views-lease")
        self._flush_task = asyncio.create_task(self._flush_loop(), name="view-flush")
        # Missing two heartbeats re-creates the consumer: after a nats-server restart
        # the views resume within seconds (nats-py's default is 5 s).
        self._following = await follow(
            self._js,
            self._store.stream,
            f"{self._store.prefix}.>",
            self._on_message,
            after=start,
            heartbeat_seconds=HEARTBEAT_SECONDS,
        )
        log_kv(
            logger,
            "views_started",
            bucket=self._bucket_name,
            from_seq=start + 1,
            writing=self.lease_held(),
        )

    async def stop(self) -> None:
        """Stop following the log; the writer writes what was applied, then hands the lease over."""
        self._stopping = True
        if self._following is not None:
            await self._following.stop()
            self._following = None
        if self._lease_task is not None:
            self._halt.set()
            await finish_task(self._lease_task, STOP_FLUSH_SECONDS)
            self._lease_task = None
        if self._flush_task is not None:
            self._flush_wanted.set()
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
        if self.lease_held():
            with contextlib.suppress(nats.errors.Error, KeyValueError, asyncio.TimeoutError):
                async with asyncio.timeout(STOP_FLUSH_SECONDS):
                    await self._flush_once(final=True)
        if self._lease is not None and self._holding:
            self._holding = False
            self._writer = None
            await self._lease.release()
            log_kv(
                logger,
                "views_lease_released",
                bucket=self._bucket_name,
                holder=self._lease.holder,
                persisted=self._persisted,
            )
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
        return await ensure_bucket(self._js, views_bucket_config(self._bucket_name))

    async def _load_bucket(self) -> None:
        async with asyncio.timeout(LOAD_TIMEOUT_SECONDS):
            stored = await read_bucket(self._js, self._bucket_name)
        for key, raw in stored.items():
            self._store_value(key, orjson.loads(raw))

    # ------------------------------------------------------------ the lease

    async def _lease_loop(self) -> None:
        """Renew the lease while holding it; else forget what the stored checkpoints
        cover and try to take it (`keep_single_active`)."""
        assert self._lease is not None
        await keep_single_active(
            self._lease,
            self._halt,
            holding=lambda: self._holding,
            keep=self._renew_lease,
            take=self._try_lease,
            name=f"views:{self._bucket_name}",
        )

    async def _renew_lease(self) -> None:
        assert self._lease is not None
        if not await self._lease.renew():
            self._lose_lease()

    async def _try_lease(self) -> None:
        """A standby's round: forget what KV already has, then try to become the writer."""
        assert self._lease is not None
        stored = await self._stored_checkpoints()
        self._forget_stored(stored)
        self._persisted = min(stored.values(), default=0)
        if self._stopping or not await self._lease.acquire():
            self._writer = await self._lease.current_holder()
            return
        try:
            # Read again now that no one else writes: the previous holder's last word.
            stored = await self._stored_checkpoints()
        except BaseException:
            await self._lease.release()
            raise
        self._forget_stored(stored)
        self._floor = max(stored.values(), default=0)
        self._written = self._persisted = min(stored.values(), default=0)
        self._checkpoint_now = True
        self._holding = True
        self._writer = self._lease.holder
        log_kv(
            logger,
            "views_lease_acquired",
            bucket=self._bucket_name,
            holder=self._lease.holder,
            position=self._applied,
            stored=self._floor,
            pending_keys=len(self._dirty),
        )
        self._flush_wanted.set()

    def _lose_lease(self) -> None:
        assert self._lease is not None
        self._holding = False
        self._writer = None
        log_kv(
            logger,
            "views_lease_lost",
            level=logging.WARNING,
            bucket=self._bucket_name,
            holder=self._lease.holder,
            persisted=self._persisted,
        )

    async def _stored_checkpoints(self) -> dict[str, int]:
        """Each projection's checkpoint as KV holds it now (0 when absent)."""
        assert self._kv is not None
        kv = self._kv

        async def stored(name: str) -> int:
            try:
                entry = await kv.get(checkpoint_key(name))
            except (KeyNotFoundError, KeyDeletedError):
                return 0
            return stored_checkpoint_seq(entry.value)

        names = [p.name for p in self._projections]
        seqs = await asyncio.gather(*(stored(name) for name in names))
        return dict(zip(names, seqs, strict=True))

    def _forget_stored(self, stored: dict[str, int]) -> None:
        """Drop the changed keys whose last change a stored checkpoint covers."""
        if not self._dirty:
            return
        prefixes = [(p.key_prefix, stored.get(p.name, 0)) for p in self._projections]

        def covered(key: str, seq: int) -> bool:
            for prefix, checkpoint in prefixes:
                if key.startswith(prefix):
                    return seq <= checkpoint
            return False

        self._dirty = {k: s for k, s in self._dirty.items() if not covered(k, s)}

    # ------------------------------------------------------------ folding

    async def _on_message(self, seq: int, subject: str, data: bytes) -> None:
        if seq <= self._applied:
            return
        event: Event | None = None
        try:
            event = decode_event(data)
        except UnknownEventError as exc:
            # An event this code cannot read must not stop every view; it is skipped loudly.
            log_kv(logger, "event_skipped", level=logging.ERROR, seq=seq, error=str(exc))
        else:
            self._apply(event, seq)
        self._applied = seq
        self._wake(seq)
        if self._on_event is not None:
            self._on_event(seq, event)
        if self._holding or self._instance_id is None:
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
                        self._dirty[key] = seq
                else:
                    self._store_value(key, updated)
                    self._dirty[key] = seq

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
            wait = self._checkpoint_wait()
            if wait is None:
                await self._flush_wanted.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._flush_wanted.wait()
            await asyncio.sleep(FLUSH_LINGER_SECONDS)
            self._flush_wanted.clear()
            try:
                await self._flush_once()
            except (TimeoutError, nats.errors.Error, KeyValueError) as exc:
                log_kv(logger, "views_flush_failed", level=logging.WARNING, error=repr(exc))
                self._flush_wanted.set()
                await asyncio.sleep(FLUSH_RETRY_SECONDS)

    def _checkpoint_wait(self) -> float | None:
        """Seconds until written values are due to get their checkpoints (None: none waiting)."""
        if self._written <= self._persisted or not self.lease_held():
            return None
        due = self._last_checkpoint + CHECKPOINT_INTERVAL_SECONDS
        return max(0.0, due - time.monotonic())

    async def _flush_once(self, *, final: bool = False) -> None:
        """Write changed keys, then the checkpoints that say they are written.

        Values go out every batch; checkpoints at most every
        `CHECKPOINT_INTERVAL_SECONDS`, and at once when `final` or after a takeover.
        Only the writer writes, and only once its fold has reached the floor.
        """
        if not self.lease_held() or self._applied < self._floor:
            return
        assert self._kv is not None
        kv = self._kv
        target = self._applied
        if self._dirty:
            batch, self._dirty = self._dirty, {}
            try:
                await asyncio.gather(*(self._write(kv, key) for key in batch))
            except BaseException:
                for key, seq in batch.items():
                    self._dirty.setdefault(key, seq)
                raise
        self._written = max(self._written, target)
        if self._written <= self._persisted:
            return
        due = time.monotonic() - self._last_checkpoint >= CHECKPOINT_INTERVAL_SECONDS
        if (final or self._checkpoint_now or due) and self.lease_held():
            await self._write_checkpoints(kv, self._written)

    async def _write_checkpoints(self, kv: KeyValue, target: int) -> None:
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
        self._last_checkpoint = time.monotonic()
        self._checkpoint_now = False

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
