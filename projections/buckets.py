"""The views' KV buckets: their config, the blue/green pointer, writer leases, checkpoints,
and how long a batch of writes gathers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from nats.js import JetStreamContext, api
from nats.js.errors import (
    KeyDeletedError,
    KeyNotFoundError,
)
from nats.js.kv import KeyValue

from llm_es.domain.turn_order import OpenTurns
from llm_es.domain.views import (
    ACTIVE_VIEWS_KEY,
    BUCKET,
    META_BUCKET,
    OPEN_TURNS_FIELD,
    ActiveViews,
    checkpoint_key,
    parse_active_views,
)
from llm_es.store.kv import bucket_config, ensure_bucket

FLUSH_LINGER_SECONDS = 0.05
"""How long changes gather before a KV write batch, at the least. Reads are served from
memory, so KV may trail by this much; in exchange a key changed by several turns meanwhile
(a busy channel's context, a user's usage) is written once, and the writes stay out of the
way of requests (5 ms put a batch in the middle of nearly every turn at concurrency 1)."""
FLUSH_LINGER_MAX_SECONDS = 0.25
FLUSH_LINGER_PER_KEY_SECONDS = 0.005
"""How much longer the next batch gathers for each key the last one wrote (`flush_linger`)."""


def flush_linger(keys_last_written: int) -> float:
    """How long the next KV write batch gathers changes, after one that wrote that many keys.

    A quiet log is written within `FLUSH_LINGER_SECONDS`. Under load every key changes
    again soon: at 32 turns at once each batch of 50 ms wrote ~2 keys a turn (a channel's
    whole context, a user's usage), each a message and an ack for this process and
    nats-server; gathering up to `FLUSH_LINGER_MAX_SECONDS` writes a busy key once for
    several turns (measured at c32 on the server's connz: 6.97 -> 5.90 messages a turn
    each way, 6.8 -> 3.8 kB a turn sent; turns/s within the bench's noise).
    """
    extra = FLUSH_LINGER_PER_KEY_SECONDS * keys_last_written
    return min(FLUSH_LINGER_MAX_SECONDS, FLUSH_LINGER_SECONDS + extra)


def views_bucket_config(bucket: str, *, replicas: int = 1) -> api.KeyValueConfig:
    """Settings of a views bucket (the live one and every blue/green generation)."""
    return bucket_config(bucket, "llm-es views, folded from the LLM_EVENTS log", replicas=replicas)


async def ensure_meta_bucket(js: JetStreamContext, *, replicas: int = 1) -> KeyValue:
    """The pointer bucket, created on first use (replicas raised to `replicas`)."""
    return await ensure_bucket(
        js,
        bucket_config(
            META_BUCKET,
            "llm-es: which views bucket is live (blue/green)",
            replicas=replicas,
            history=5,
        ),
    )


async def read_active_views(js: JetStreamContext, *, replicas: int = 1) -> ActiveViews:
    """The live views bucket as the pointer names it now (`llm_data` when there is none)."""
    kv = await ensure_meta_bucket(js, replicas=replicas)
    try:
        entry = await kv.get(ACTIVE_VIEWS_KEY)
    except (KeyNotFoundError, KeyDeletedError):
        return ActiveViews(BUCKET, 1, 0)
    return parse_active_views(entry.value, entry.revision or 0)


def views_lease_key(bucket: str) -> str:
    """The lease (in bucket `llm_leases`) whose holder writes the views bucket `bucket`."""
    return f"views.{bucket}"


def stored_checkpoint_seq(raw: bytes | None) -> int:
    """The sequence of a stored checkpoint value; anything unreadable counts as 0."""
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return 0
    seq = value.get("seq") if isinstance(value, dict) else None
    return seq if type(seq) is int and seq > 0 else 0


Turns = dict[str, str] | None
"""Open turns as a checkpoint records them (turn id -> user), None when not known."""


def checkpoint_value(seq: int, open_turns: Turns) -> dict[str, Any]:
    """A checkpoint at `seq`, with the turns open there when they are known (a fold that
    resumes from one without them trusts unknown turns' ends for a while)."""
    if open_turns is None:
        return {"seq": seq}
    return {"seq": seq, OPEN_TURNS_FIELD: open_turns}


def open_turns_at(
    start: int, checkpoints: Iterable[dict[str, Any] | None], *, first_seq: int
) -> OpenTurns:
    """The open turns where a fold resumes (`start`, the lowest checkpoint): those a
    checkpoint at `start` recorded, or none from the log's start. When they are not
    known (checkpoints from before 0.4 had none; retention removed events after
    `start`: the log's `first_seq` is past it), the fold trusts unknown turns' ends for
    a while (`OpenTurns`)."""
    if first_seq > start + 1:
        return OpenTurns(started_mid_log=True)
    if start == 0:
        return OpenTurns()
    for stored in checkpoints:
        if stored and int(stored["seq"]) == start and OPEN_TURNS_FIELD in stored:
            return OpenTurns(stored[OPEN_TURNS_FIELD])
    return OpenTurns(started_mid_log=True)


async def stored_checkpoints(kv: KeyValue, projections: Sequence[str]) -> dict[str, int]:
    """Each projection's checkpoint as the bucket holds it now (0 when absent)."""

    async def stored(name: str) -> int:
        try:
            entry = await kv.get(checkpoint_key(name))
        except (KeyNotFoundError, KeyDeletedError):
            return 0
        return stored_checkpoint_seq(entry.value)

    seqs = await asyncio.gather(*(stored(name) for name in projections))
    return dict(zip(projections, seqs, strict=True))
