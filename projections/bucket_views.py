"""One views bucket: its lease, and (while this instance holds it) the batched KV writes
of the values `projections.memory_views` folds, and of their checkpoints.

See `projections.runner` for how buckets are followed and swapped (blue/green).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.errors import KeyValueError
from nats.js.kv import KeyValue

from llm_es.domain.views import BUCKET, EventListener, checkpoint_key
from llm_es.logs import log_kv
from llm_es.store.follow import Following, follow
from llm_es.store.kv import ensure_bucket, read_bucket
from llm_es.store.lease import KvLease, keep_single_active, open_lease
from llm_es.store.log import EventStore
from llm_es.tasks import finish_task
from projections.base import Projection
from projections.buckets import (
    Turns,
    checkpoint_value,
    flush_linger,
    open_turns_at,
    stored_checkpoints,
    views_bucket_config,
    views_lease_key,
)
from projections.memory_views import MemoryViews

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_SECONDS = 30.0
FLUSH_RETRY_SECONDS = 0.5
HEARTBEAT_SECONDS = 1.0
CHECKPOINT_INTERVAL_SECONDS = 1.0
"""Checkpoints are written at most this often (and at stop and takeover); values every batch."""
DEFAULT_LEASE_TTL_SECONDS = 15.0
"""Lease TTL asked for when a runner creates the leases bucket (`service.instance_ttl_seconds`)."""
STOP_FLUSH_SECONDS = 5.0


class BucketViews(MemoryViews):
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
        super().__init__(store, projections, on_event)
        self._js = js
        self._bucket_name = bucket
        self._kv: KeyValue | None = None
        self._dirty: dict[str, int] = {}
        """Changed keys not known to be in KV -> stream sequence of their last change."""
        self._keys_last_written = 0
        """How many keys the last batch wrote (the next one gathers longer: `flush_linger`)."""
        self._written = 0
        """Every change up to this sequence is in KV (its checkpoints may lag behind)."""
        self._written_turns: Turns = {}
        """The turns open at `_written`, for its checkpoints (None: not known)."""
        self._persisted = 0
        """Last stream sequence whose views and checkpoints are in KV: the writer's own; a
        standby's is the lowest checkpoint it last read."""
        self._floor = 0
        """No writes before the fold reaches it: the highest stored checkpoint at takeover."""
        self._last_checkpoint = 0.0
        self._checkpoint_now = False
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

    # ------------------------------------------------------------ who writes

    def projection_positions(self) -> dict[str, int]:
        """How far each projection's views include the log (a stored checkpoint ahead of the
        fold means the projection already has those events)."""
        return {name: max(self._applied, seq) for name, seq in self._checkpoints.items()}

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
        config = views_bucket_config(self._bucket_name, replicas=self._store.replicas)
        self._kv = await ensure_bucket(self._js, config)
        await self._load_bucket()
        checkpoints = [self._values.get(checkpoint_key(p.name)) for p in self._projections]
        for projection, stored in zip(self._projections, checkpoints, strict=True):
            self._checkpoints[projection.name] = int(stored["seq"]) if stored else 0
        start = min(self._checkpoints.values(), default=0)
        self._applied = self._persisted = self._written = start
        first_seq = await self._store.first_seq()
        self.quarantine.turns = open_turns_at(start, checkpoints, first_seq=first_seq)
        self._written_turns = self._open_turns_now()
        if self._instance_id is not None:
            key, holder = views_lease_key(self._bucket_name), self._instance_id
            self._lease = await open_lease(
                self._js, key, holder, self._lease_ttl, replicas=self._store.replicas
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
        self.cancel_waiters()

    @property
    def bucket(self) -> str:
        return self._bucket_name

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
        assert self._kv is not None
        return await stored_checkpoints(self._kv, [p.name for p in self._projections])

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

    # ------------------------------------------------------------ writing

    async def _flush_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._checkpoint_wait()):  # None: no time limit
                    await self._flush_wanted.wait()
            await asyncio.sleep(flush_linger(self._keys_last_written))
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
        turns_at_target = self._open_turns_now()
        self._keys_last_written = len(self._dirty)
        if self._dirty:
            batch, self._dirty = self._dirty, {}
            try:
                await asyncio.gather(*(self._write(kv, key) for key in batch))
            except BaseException:
                for key, seq in batch.items():
                    self._dirty.setdefault(key, seq)
                raise
        if target >= self._written:
            self._written, self._written_turns = target, turns_at_target
        if self._written <= self._persisted:
            return
        due = time.monotonic() - self._last_checkpoint >= CHECKPOINT_INTERVAL_SECONDS
        if (final or self._checkpoint_now or due) and self.lease_held():
            await self._write_checkpoints(kv, self._written, self._written_turns)

    def _open_turns_now(self) -> Turns:
        turns = self.quarantine.turns
        return turns.snapshot() if turns is not None else {}

    async def _write_checkpoints(self, kv: KeyValue, target: int, turns: Turns) -> None:
        """Checkpoints at `target`, with the turns open there (where a restart's fold
        starts, `projections.buckets.open_turns_at`)."""
        checkpoint_writes = []
        for name, checkpoint in self._checkpoints.items():
            self._checkpoints[name] = max(checkpoint, target)
            key, value = checkpoint_key(name), checkpoint_value(target, turns)
            self._store_value(key, value)
            checkpoint_writes.append(kv.put(key, orjson.dumps(value)))
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

    def _changed(self, key: str, seq: int) -> None:
        self._dirty[key] = seq

    def _folded(self) -> None:
        if self._holding or self._instance_id is None:
            self._flush_wanted.set()
