"""An exclusive lease with a TTL on one key of KV bucket `llm_leases`: one active worker
across instances.

The bucket's `max_age` is the lease TTL, so a holder that stops renewing (it
died, or lost its connection) loses the lease without anyone deleting it. The
bucket is created on first use with the TTL its creator asks for; every lease
then uses the TTL the bucket has (`KvLease.ttl_seconds`), whoever asks.
`keep_single_active` is the loop every single-active worker runs around its
lease (the view writer, the event publisher).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import nats.errors
import orjson
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyValueError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from llm_es.domain.events import iso_utc
from llm_es.errors import OperationalError
from llm_es.logs import log_kv
from llm_es.store.kv import bucket_config, ensure_bucket

logger = logging.getLogger(__name__)

LEASE_BUCKET = "llm_leases"
"""KV bucket of leases; its `max_age` is the lease TTL (a lease not renewed expires)."""

LEASE_VALID_FRACTION = 0.75
"""A holder stops acting this far into the TTL after its last renewal was sent,
before the server can have expired the lease and let another instance take it."""


async def open_lease(
    js: JetStreamContext, key: str, holder: str, ttl_seconds: float, *, replicas: int = 1
) -> KvLease:
    """A lease on `key` for `holder`, with the TTL of the leases bucket (created if needed,
    with `max_age = ttl_seconds`, at `replicas` copies)."""
    leases = await ensure_bucket(
        js,
        bucket_config(
            LEASE_BUCKET,
            "llm-es leases: single active workers across instances",
            replicas=replicas,
            ttl=ttl_seconds,
        ),
    )
    ttl = (await leases.status()).ttl
    if not ttl:
        raise OperationalError(
            f"KV bucket {LEASE_BUCKET} has no max_age: leases would never expire"
        )
    return KvLease(leases, key, holder, ttl)


class KvLease:
    """An exclusive lease on one key of a KV bucket whose `max_age` is the lease's TTL.

    `acquire` creates the key (only if absent), `renew` rewrites it at the
    revision this holder last wrote, `release` deletes it at that revision. The
    holder counts the lease as its own only until `LEASE_VALID_FRACTION` of the
    TTL after it sent the last successful write: by then it has stopped acting,
    before the server can let anyone else in.
    """

    def __init__(self, kv: KeyValue, key: str, holder: str, ttl_seconds: float) -> None:
        self._kv = kv
        self.key = key
        self.holder = holder
        self.ttl_seconds = ttl_seconds
        self._revision: int | None = None
        self._valid_until = 0.0

    def held(self) -> bool:
        return self._revision is not None and time.monotonic() < self._valid_until

    def _value(self) -> bytes:
        return orjson.dumps({"holder": self.holder, "renewed_at": iso_utc(datetime.now(UTC))})

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it, or if its value names this holder."""
        sent = time.monotonic()
        try:
            self._revision = await self._kv.create(self.key, self._value())
        except KeyWrongLastSequenceError:
            self._revision = await self._retake_own()
        except (KeyValueError, APIError, nats.errors.Error):
            return False
        if self._revision is None:
            return False
        self._valid_until = sent + self.ttl_seconds * LEASE_VALID_FRACTION
        return True

    async def renew(self) -> bool:
        """Extend the lease; False once it is lost (taken, expired or unreachable too long)."""
        if self._revision is None:
            return False
        sent = time.monotonic()
        try:
            self._revision = await self._kv.update(self.key, self._value(), last=self._revision)
        except KeyWrongLastSequenceError:
            self._revision = await self._retake_own()
            if self._revision is None:
                return False
        except (KeyValueError, APIError, nats.errors.Error):
            return self.held()  # unreachable for now: still ours until the deadline
        self._valid_until = sent + self.ttl_seconds * LEASE_VALID_FRACTION
        return True

    async def _retake_own(self) -> int | None:
        """The lease rewritten at its stored revision when its value names this holder, else
        None. A renewal sent while nats-server was away is stored once nats-py reconnects,
        unseen by the holder, whose revision is then stale: without this it would count the
        lease lost and stand by until the lease it still holds expires (the TTL, 15 s)."""
        try:
            entry = await self._kv.get(self.key)
            if holder_of(entry.value) != self.holder:
                return None
            return await self._kv.update(self.key, self._value(), last=entry.revision)
        except (KeyValueError, APIError, nats.errors.Error):
            return None

    async def release(self) -> None:
        revision, self._revision = self._revision, None
        if revision is None:
            return
        with contextlib.suppress(KeyValueError, APIError, nats.errors.Error):
            await self._kv.delete(self.key, last=revision)

    async def current_holder(self) -> str | None:
        """Who holds the lease as the bucket says now (None: nobody, or unreadable)."""
        try:
            entry = await self._kv.get(self.key)
        except (KeyValueError, APIError, nats.errors.Error):
            return None
        return holder_of(entry.value)


def holder_of(raw: bytes | None) -> str | None:
    """The `holder` a lease (or a value written by a lease holder) names; None if unreadable."""
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None
    holder = value.get("holder") if isinstance(value, dict) else None
    return holder if isinstance(holder, str) else None


RENEWALS_PER_TTL = 4
"""A holder renews this many times per TTL (one lost renewal still leaves three)."""
STANDBY_POLL_SECONDS = 1.0
"""A standby tries to take the lease at least this often."""


async def keep_single_active(
    lease: KvLease,
    halt: asyncio.Event,
    *,
    holding: Callable[[], bool],
    keep: Callable[[], Awaitable[None]],
    take: Callable[[], Awaitable[None]],
    name: str,
) -> None:
    """The single-active loop of a worker that acts only while it holds `lease`.

    Until `halt` is set: while `holding()`, call `keep` (renew the lease, or step
    down) every `1/RENEWALS_PER_TTL` of the TTL; otherwise call `take` (a standby's
    round: try to acquire and start acting) at least every `STANDBY_POLL_SECONDS`.
    The loop outlives any failure of a round, so a worker whose store is briefly
    unreachable keeps competing. An outage is logged as one WARNING line when the
    rounds start failing and one when they work again (a round runs every second
    or so: a line per round would bury the log); an unexpected error, in full, once.
    """
    renew_every = lease.ttl_seconds / RENEWALS_PER_TTL
    failing = False
    while not halt.is_set():
        try:
            await (keep() if holding() else take())
        except (TimeoutError, nats.errors.Error, KeyValueError, OperationalError) as exc:
            if not failing:
                log_kv(
                    logger,
                    "lease_loop_failing",
                    level=logging.WARNING,
                    worker=name,
                    key=lease.key,
                    error=type(exc).__name__,
                )
            failing = True
        except Exception:  # the loop must outlive any failure; a bug is logged in full
            if not failing:
                logger.exception("lease_loop_round_failed worker=%s key=%s", name, lease.key)
            failing = True
        else:
            if failing:
                log_kv(
                    logger,
                    "lease_loop_recovered",
                    level=logging.WARNING,
                    worker=name,
                    key=lease.key,
                )
            failing = False
        interval = renew_every if holding() else min(STANDBY_POLL_SECONDS, renew_every)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await halt.wait()
